//! What a command prints on standard output, written so that a reader that goes away ends the
//! command quietly.
//!
//! `std`'s `print!` and `println!` panic when the write fails: `bellwether detect … --output - |
//! head` printed `failed printing to stdout: Broken pipe` and a backtrace hint once `head` had
//! its ten lines. Unix tools stop there, silently, because `SIGPIPE` kills them; a Rust program
//! ignores `SIGPIPE` (resetting it needs `unsafe`, which the workspace forbids, and would also
//! let a peer that hangs up kill the server, the agent or the proxy in a socket write).
//!
//! So the crates that print reports (the `bellwether` binary, `bellwether-sandbox`,
//! `bellwether-bench`) shadow `print!` and `println!` at their crate root with macros that call
//! [`print`], and every report they print goes through here:
//!
//! - a closed pipe (`BrokenPipe`) ends the process with exit code 0 and nothing on stderr, as
//!   `ripgrep` does: the reader had what it wanted;
//! - any other write error (a full disk behind `> file`) ends it with exit code 1 and one
//!   line on stderr naming the error, instead of a panic.
//!
//! [`is_broken_pipe`] is the same rule for an error that came back through `?` (a `writeln!`
//! to a locked stdout): the binary's `main` checks it before printing the error.

#![forbid(unsafe_code)]

use std::fmt;
use std::io::{self, Write};

/// The exit code of a command whose reader closed its standard output.
pub const CLOSED_PIPE_EXIT: i32 = 0;

/// Writes `args` to standard output. A closed pipe ends the process quietly (exit code
/// [`CLOSED_PIPE_EXIT`]); another write error ends it with exit code 1 and a line on stderr.
pub fn print(args: fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(args) {
        drop(out);
        exit_on_write_error(&e);
    }
}

/// Ends the process for a failed write to standard output, as [`print`] does.
pub fn exit_on_write_error(e: &io::Error) -> ! {
    if e.kind() == io::ErrorKind::BrokenPipe {
        std::process::exit(CLOSED_PIPE_EXIT);
    }
    // stderr may be gone too: nothing else can be told then.
    let _ = writeln!(io::stderr(), "error: cannot write to standard output: {e}");
    std::process::exit(1);
}

/// Whether an error (or one of its sources) is a closed pipe: the reader went away.
pub fn is_broken_pipe(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::BrokenPipe {
                return true;
            }
        }
        cur = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(io::Error);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("could not print the report")
        }
    }
    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_closed_pipe_is_found_in_the_source_chain() {
        let pipe = Wrapper(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&pipe));
        let full = Wrapper(io::Error::other("No space left on device"));
        assert!(!is_broken_pipe(&full));
        assert!(is_broken_pipe(&io::Error::from(io::ErrorKind::BrokenPipe)));
    }
}
