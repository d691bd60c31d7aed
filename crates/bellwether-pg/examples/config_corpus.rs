//! `bellwether bench config-corpus` without building the CLI: the same harness
//! (`crates/bellwether-bench/src/config_corpus.rs`, compiled in here as a module) on this
//! crate's small dependency set, so a release build takes minutes instead of the whole
//! workspace's.
//!
//! ```text
//! cargo run --release -p bellwether-pg --example config_corpus -- [--workers N] [--only TEXT]
//!     [--changes N] [--no-control] [--output human|json]
//! ```
//!
//! Exit 0 when every goal is met, 1 when one is missed, 2 on bad arguments, 3 when PostgreSQL
//! cannot be found or started, 4 when the run failed (as the CLI's `bench`).

#[path = "../../bellwether-bench/src/config_corpus.rs"]
#[allow(dead_code)]
mod config_corpus;

/// The bench crate's `Verdict`, `Output` and `BenchError`, as far as the harness uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    #[default]
    Human,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Failed(String),
}

fn parse(args: &[String]) -> Result<config_corpus::Options, String> {
    let mut o = config_corpus::Options {
        changes: None,
        only: None,
        workers: 2,
        control: true,
        output: Output::Human,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--workers" => {
                let v = value()?;
                o.workers = v
                    .parse()
                    .map_err(|_| format!("--workers {v:?}: not a number"))?;
            }
            "--changes" => {
                let v = value()?;
                o.changes = Some(
                    v.parse()
                        .map_err(|_| format!("--changes {v:?}: not a number"))?,
                );
            }
            "--only" => o.only = Some(value()?),
            "--no-control" => o.control = false,
            "--output" => {
                o.output = match value()?.as_str() {
                    "human" => Output::Human,
                    "json" => Output::Json,
                    other => return Err(format!("--output {other:?}: expected human or json")),
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("config_corpus: {e}");
            std::process::exit(2);
        }
    };
    match config_corpus::run(&opts) {
        Ok(Verdict::Met) => {}
        Ok(Verdict::Missed) => std::process::exit(1),
        Err(e) => {
            eprintln!("config_corpus: {e}");
            std::process::exit(match e {
                BenchError::Usage(_) => 2,
                BenchError::Unreachable(_) => 3,
                BenchError::Failed(_) => 4,
            });
        }
    }
}
