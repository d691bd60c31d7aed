//! Detached child processes: started in their own process group so they outlive `sandbox up`,
//! recognised later by their command line (so a recycled PID is never signalled), and stopped
//! with SIGTERM, then SIGKILL after a grace period.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::{Result, SandboxError};

/// Starts `exe args…` in its own process group, with stdin closed and stdout and stderr
/// appended to `log`.
pub fn spawn_detached(
    exe: &Path,
    args: &[OsString],
    envs: &[(&str, &str)],
    log: &Path,
) -> Result<Child> {
    use std::os::unix::process::CommandExt as _;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| SandboxError::io("open", log, e))?;
    let err = out
        .try_clone()
        .map_err(|e| SandboxError::io("open", log, e))?;
    let mut cmd = Command::new(exe);
    // Logs go to files: no colour codes in them.
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .env("NO_COLOR", "1");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().map_err(|e| SandboxError::io("start", exe, e))
}

/// True when `pid` is a live (not zombie) process whose command line mentions `marker` — the
/// sandbox directory — so a PID the kernel gave to someone else is left alone.
pub fn is_ours(pid: u32, marker: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state is the first field after the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, Some("Z" | "X") | None) {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).contains(marker),
        Err(_) => false,
    }
}

/// Sends `sig` to the process group `pid` leads, or to the process alone if that fails.
pub fn signal(pid: u32, sig: Signal) {
    let p = Pid::from_raw(pid as i32);
    if killpg(p, sig).is_err() {
        let _ = kill(p, sig);
    }
}

/// Waits until none of `pids` is alive, or `timeout` passes; returns those still alive.
pub fn wait_gone(pids: &[u32], marker: &str, timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let alive: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| is_ours(*p, marker))
            .collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL and wait again. Returns how many needed SIGKILL,
/// or an error naming the processes that survived even that.
pub fn stop(pids: &[u32], marker: &str, grace: Duration) -> Result<usize> {
    let alive: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| is_ours(*p, marker))
        .collect();
    for p in &alive {
        signal(*p, Signal::SIGTERM);
    }
    let stubborn = wait_gone(&alive, marker, grace);
    for p in &stubborn {
        signal(*p, Signal::SIGKILL);
    }
    let left = wait_gone(&stubborn, marker, Duration::from_secs(5));
    if !left.is_empty() {
        return Err(SandboxError::Process(format!(
            "processes {left:?} did not exit after SIGKILL"
        )));
    }
    Ok(stubborn.len())
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
