//! The chaos drill's writer as a process of its own, for the crate's tests
//! (`bellwether shadow drill` runs the same code as a hidden mode of the main binary).

use std::process::ExitCode;

use bellwether_shadow::drill::writer::{self, WriterConfig};

fn main() -> ExitCode {
    let cfg = match WriterConfig::from_args(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match writer::run(&cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_full() => ExitCode::from(writer::EXIT_FULL as u8),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
