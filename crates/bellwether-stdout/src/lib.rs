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
//!
//! Long work shows a [`Progress`] spinner on stderr when stderr is a terminal, and nothing when
//! it is not (piped, redirected, a test). While one is shown, [`print`] lifts it off the screen
//! for each write, so that the report lines and the spinner never garble each other.

#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::fmt;
use std::io::{self, IsTerminal as _, Write};
use std::sync::Mutex;
use std::time::Duration;

/// The spinner on screen, if any: [`print`] suspends it around each write.
static ACTIVE: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);

/// The exit code of a command whose reader closed its standard output.
pub const CLOSED_PIPE_EXIT: i32 = 0;

/// Writes `args` to standard output. A closed pipe ends the process quietly (exit code
/// [`CLOSED_PIPE_EXIT`]); another write error ends it with exit code 1 and a line on stderr.
pub fn print(args: fmt::Arguments<'_>) {
    let write = || {
        let mut out = io::stdout().lock();
        out.write_fmt(args).and_then(|()| out.flush())
    };
    let bar = ACTIVE.lock().ok().and_then(|g| g.clone());
    let written = match bar {
        Some(b) if !b.is_hidden() => b.suspend(write),
        _ => write(),
    };
    if let Err(e) = written {
        exit_on_write_error(&e);
    }
}

/// A spinner with the elapsed time on stderr, for long work: drawn only when stderr is a
/// terminal, never when it is piped or redirected. Cleared when dropped.
pub struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    /// Starts the spinner with `message` (`training the model`), shown as
    /// `⠋ training the model (12s)`.
    pub fn spinner(message: impl Into<Cow<'static, str>>) -> Progress {
        let bar = if io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new_spinner();
            let style = indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_message(message);
        if let Ok(mut g) = ACTIVE.lock() {
            *g = Some(bar.clone());
        }
        Progress { bar }
    }

    /// Whether it is drawn (stderr is a terminal).
    pub fn is_shown(&self) -> bool {
        !self.bar.is_hidden()
    }

    /// Changes the message beside the spinner.
    pub fn set_message(&self, message: impl Into<Cow<'static, str>>) {
        self.bar.set_message(message);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
        if let Ok(mut g) = ACTIVE.lock() {
            // Only this spinner: a newer one (nested work) stays.
            if g.as_ref().is_some_and(|b| b.is_finished()) {
                *g = None;
            }
        }
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

    /// Tests run with stderr captured, not a terminal: the spinner is never drawn, and a
    /// print while it is active still writes.
    #[test]
    fn a_spinner_is_hidden_off_a_terminal() {
        let p = Progress::spinner("working");
        assert_eq!(p.is_shown(), io::stderr().is_terminal());
        print(format_args!(""));
        drop(p);
        assert!(ACTIVE.lock().unwrap().is_none());
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
