//! Starting, stopping and sampling the processes of a service instance on this host.
//!
//! Shared by the one-machine runner ([`crate::local`]) and the agent's process built-ins
//! (`start_process`, `stop_process`, `sample_processes`), so both start, signal and measure
//! a process the same way:
//!
//! - **start**: the argv runs directly (never through a shell) in a process group of its own
//!   (so a signal to the caller's group does not reach it), stdin from `/dev/null`, stdout and
//!   stderr to the log file the caller opened. With a pidfile the argv is a launcher (like
//!   `pg_ctl -w start`) that must exit 0 within the timeout, and the instance's PID is the
//!   pidfile's first line; without one the spawned process is the instance.
//! - **stop**: a stop argv, or SIGTERM to the one PID through kill(2), never to a process
//!   group: 0, 1 and PIDs past [`bellwether_engine::patch::PID_MAX`] are refused
//!   ([`bellwether_engine::patch::check_pid`]).
//! - **sample**: cumulative CPU ticks (utime + stime) and resident bytes summed over a
//!   process and all its descendants, read from `/proc` in one pass.
//!
//! A zombie (exited, not yet reaped) counts as exited everywhere.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

/// Why a process could not be started, stopped or found.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("argv is empty")]
    EmptyArgv,
    #[error("argv[{index}] contains a NUL byte")]
    NulInArgv { index: usize },
    #[error("{field} {path:?} is not usable: {why}")]
    BadPath {
        field: &'static str,
        path: String,
        why: &'static str,
    },
    #[error("cannot run {program:?}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("cannot wait for {program:?}: {source}")]
    Wait {
        program: String,
        source: std::io::Error,
    },
    #[error("start command still running after {ms} ms")]
    LauncherTimeout { ms: u128 },
    #[error("start command exited with {status}")]
    LauncherFailed { status: ExitStatus },
    #[error("stop command still running after {ms} ms")]
    StopTimeout { ms: u128 },
    #[error("stop command exited with {status}")]
    StopFailed { status: ExitStatus },
    #[error("the started process exited at once")]
    ExitedAtOnce,
    #[error("cannot read pidfile {path}: {source}")]
    ReadPidfile {
        path: String,
        source: std::io::Error,
    },
    #[error("pidfile {path} does not start with a PID")]
    NoPid { path: String },
    #[error("will not signal PID {pid}: {why}")]
    RefusedPid { pid: u32, why: String },
    #[error("cannot send SIGTERM to PID {pid}: {source}")]
    Signal { pid: u32, source: nix::errno::Errno },
}

/// Checks an argv: at least the program, no NUL byte anywhere.
pub fn check_argv(argv: &[String]) -> Result<(), ProcessError> {
    if argv.is_empty() || argv[0].is_empty() {
        return Err(ProcessError::EmptyArgv);
    }
    if let Some(index) = argv.iter().position(|a| a.contains('\0')) {
        return Err(ProcessError::NulInArgv { index });
    }
    Ok(())
}

/// Checks a host path given to a built-in (a pidfile): absolute, without a NUL byte.
pub fn check_host_path(field: &'static str, path: &str) -> Result<(), ProcessError> {
    let why = if path.is_empty() {
        Some("it is empty")
    } else if path.contains('\0') {
        Some("it contains a NUL byte")
    } else if !path.starts_with('/') {
        Some("it is not absolute")
    } else {
        None
    };
    match why {
        Some(why) => Err(ProcessError::BadPath {
            field,
            path: path.to_string(),
            why,
        }),
        None => Ok(()),
    }
}

/// The PID on the first line of a pidfile (PostgreSQL's `postmaster.pid` has more lines).
pub fn read_pidfile(path: &str) -> Result<u32, ProcessError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProcessError::ReadPidfile {
        path: path.to_string(),
        source,
    })?;
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| ProcessError::NoPid {
            path: path.to_string(),
        })
}

/// A started instance.
#[derive(Debug)]
pub struct Started {
    /// The instance's PID: the spawned process, or the pidfile's.
    pub pid: u32,
    /// The spawned process when it is the instance (no pidfile). Dropping it neither kills nor
    /// leaks it: the runtime reaps it when it exits.
    pub child: Option<tokio::process::Child>,
}

/// Starts `argv` in a process group of its own, stdin from `/dev/null`, stdout and stderr to
/// `log`. With `pidfile`, `argv` is a launcher that must exit 0 within `timeout` (it is killed
/// if it does not) and the PID is read from the pidfile; without it, the spawned process is
/// the instance.
pub async fn start(
    argv: &[String],
    pidfile: Option<&str>,
    timeout: Duration,
    log: std::fs::File,
    cwd: Option<&Path>,
) -> Result<Started, ProcessError> {
    check_argv(argv)?;
    if let Some(p) = pidfile {
        check_host_path("pidfile", p)?;
    }
    let spawn = |source| ProcessError::Spawn {
        program: argv[0].clone(),
        source,
    };
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(spawn)?)
        .stderr(log)
        .process_group(0);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().map_err(spawn)?;
    match pidfile {
        Some(pidfile) => {
            let status = match tokio::time::timeout(timeout, child.wait()).await {
                Ok(r) => r.map_err(|source| ProcessError::Wait {
                    program: argv[0].clone(),
                    source,
                })?,
                Err(_) => {
                    // Only the launcher, which is ours; whatever it started is left alone.
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    return Err(ProcessError::LauncherTimeout {
                        ms: timeout.as_millis(),
                    });
                }
            };
            if !status.success() {
                return Err(ProcessError::LauncherFailed { status });
            }
            Ok(Started {
                pid: read_pidfile(pidfile)?,
                child: None,
            })
        }
        None => {
            let pid = child.id().ok_or(ProcessError::ExitedAtOnce)?;
            Ok(Started {
                pid,
                child: Some(child),
            })
        }
    }
}

/// What `log` gained after byte `from` (its length before a launcher ran), the last
/// `max` bytes of it, trimmed: the launcher's own words when it failed (`pg_ctl` says "could
/// not start server" there, and the server's log path). Empty when the log cannot be read.
pub fn output_since(log: &Path, from: u64, max: usize) -> String {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let Ok(mut f) = std::fs::File::open(log) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(max as u64));
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&buf).trim().to_string()
}

/// `e`, with what the launcher printed after byte `from` of `log` when the launcher failed or
/// the process exited at once; `e` alone otherwise, or when it printed nothing.
pub fn explain_start_failure(e: &ProcessError, log: &Path, from: u64) -> String {
    let output = match e {
        ProcessError::LauncherFailed { .. } | ProcessError::ExitedAtOnce => {
            output_since(log, from, 1000)
        }
        _ => String::new(),
    };
    if output.is_empty() {
        e.to_string()
    } else {
        format!("{e}; it printed: {output}")
    }
}

/// Runs a stop argv to its end (within `timeout` if given; then it is killed) and fails unless
/// it exits 0.
pub async fn run_stop_argv(
    argv: &[String],
    timeout: Option<Duration>,
    stdout: Stdio,
    stderr: Stdio,
) -> Result<ExitStatus, ProcessError> {
    check_argv(argv)?;
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ProcessError::Spawn {
            program: argv[0].clone(),
            source,
        })?;
    let wait = child.wait();
    let status = match timeout {
        Some(t) => tokio::time::timeout(t, wait)
            .await
            .map_err(|_| ProcessError::StopTimeout { ms: t.as_millis() })?,
        None => wait.await,
    }
    .map_err(|source| ProcessError::Wait {
        program: argv[0].clone(),
        source,
    })?;
    if status.success() {
        Ok(status)
    } else {
        Err(ProcessError::StopFailed { status })
    }
}

/// Sends SIGTERM to the one process `pid` through kill(2), after the checks of
/// [`bellwether_engine::patch::check_pid`].
pub fn terminate(pid: u32) -> Result<(), ProcessError> {
    let one = bellwether_engine::patch::check_pid(pid)
        .map_err(|why| ProcessError::RefusedPid { pid, why })?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(one),
        nix::sys::signal::Signal::SIGTERM,
    )
    .map_err(|source| ProcessError::Signal { pid, source })
}

/// What became of a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopped {
    pub pid: u32,
    /// Whether the PID was gone (or a zombie) within the timeout.
    pub exited: bool,
}

/// Stops the process `pid`: runs `argv` if given, else sends SIGTERM to the PID; then waits
/// up to what is left of `timeout` for the PID to exit. A stop argv that fails is an error; a
/// process still running at the end is not (`exited: false`).
pub async fn stop(
    pid: u32,
    argv: Option<&[String]>,
    timeout: Duration,
    log: Option<std::fs::File>,
) -> Result<Stopped, ProcessError> {
    let deadline = Instant::now() + timeout;
    // The PID rules hold for a stop argv too: it is the PID the stop waits on.
    bellwether_engine::patch::check_pid(pid)
        .map_err(|why| ProcessError::RefusedPid { pid, why })?;
    match argv {
        Some(argv) => {
            let (out, err) = match log {
                Some(f) => {
                    let e = f.try_clone().map_err(|source| ProcessError::Spawn {
                        program: argv.first().cloned().unwrap_or_default(),
                        source,
                    })?;
                    (Stdio::from(f), Stdio::from(e))
                }
                None => (Stdio::null(), Stdio::null()),
            };
            run_stop_argv(argv, Some(timeout), out, err).await?;
        }
        None => terminate(pid)?,
    }
    let left = deadline.saturating_duration_since(Instant::now());
    Ok(Stopped {
        pid,
        exited: wait_exit(pid, left).await,
    })
}

/// Whether `pid` names a live process (not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => parse_stat(&stat).is_some_and(|s| !matches!(s.state, 'Z' | 'X')),
        Err(_) => false,
    }
}

/// Waits up to `timeout` for `pid` to exit; whether it did.
pub async fn wait_exit(pid: u32, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if !alive(pid) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        // A process that is not ours gives no event to wait on (pidfds are not portable
        // here); /proc is polled.
        let next = (tokio::time::Instant::now() + Duration::from_millis(20)).min(deadline);
        tokio::time::sleep_until(next).await;
    }
}

/// The fields of `/proc/PID/stat` that sampling uses.
#[derive(Debug, Clone, Copy)]
struct Stat {
    state: char,
    ppid: u32,
    ticks: u64,
    rss_pages: u64,
}

fn parse_stat(stat: &str) -> Option<Stat> {
    // The command (field 2) is in parentheses and may hold spaces and parentheses itself.
    let (_, after) = stat.rsplit_once(')')?;
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the command: state is field 3, ppid 4, utime 14, stime 15, rss 24 (1-based).
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        ticks: num(11) + num(12),
        rss_pages: num(21),
    })
}

/// The kernel's clock ticks per second (`USER_HZ`, the unit of `cpu_ticks`).
pub fn ticks_per_s() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|&v| v > 0)
        .unwrap_or(100)
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|&v| v > 0)
        .unwrap_or(4096)
}

/// CPU and memory of one process tree, cumulative since each process started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// utime + stime of the process and every descendant, in [`ticks_per_s`] units.
    pub cpu_ticks: u64,
    /// Resident memory of the same processes, in bytes.
    pub rss_bytes: u64,
}

/// One process of a [`Samples`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSample {
    pub alive: bool,
    pub cpu_ticks: u64,
    pub ticks_per_s: u64,
    pub rss_bytes: u64,
}

/// The output of `sample_processes`: `{"at_ms": T, "processes": {"PID": {...}}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Samples {
    pub at_ms: i64,
    pub processes: BTreeMap<u32, ProcessSample>,
}

/// Every process in `/proc` with its stat fields, read once.
fn read_all() -> HashMap<u32, Stat> {
    let mut all = HashMap::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Some(s) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .as_deref()
                .and_then(parse_stat)
            {
                all.insert(pid, s);
            }
        }
    }
    all
}

/// The usage of `root`'s tree in `all`; `None` if `root` is gone or a zombie.
fn tree_usage(all: &HashMap<u32, Stat>, root: u32, page: u64) -> Option<Usage> {
    let r = all.get(&root)?;
    if matches!(r.state, 'Z' | 'X') {
        return None;
    }
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, s) in all {
        children.entry(s.ppid).or_default().push(pid);
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        if let Some(c) = children.get(&tree[i]) {
            // A PID is never its own ancestor in /proc, but a pass that raced with PID reuse
            // must not loop: each PID is taken once.
            for &pid in c {
                if !tree.contains(&pid) {
                    tree.push(pid);
                }
            }
        }
        i += 1;
    }
    let mut u = Usage {
        cpu_ticks: 0,
        rss_bytes: 0,
    };
    for pid in tree {
        if let Some(s) = all.get(&pid) {
            u.cpu_ticks += s.ticks;
            u.rss_bytes += s.rss_pages * page;
        }
    }
    Some(u)
}

/// The usage of the tree rooted at `root`; `None` if `root` is gone or a zombie.
pub fn usage(root: u32) -> Option<Usage> {
    // Cheap test first: no /proc pass for a process that is gone.
    if !alive(root) {
        return None;
    }
    tree_usage(&read_all(), root, page_size())
}

/// Samples each of `pids` (its whole tree) in one pass over `/proc`. A PID that is gone is
/// `alive: false` with zero figures.
pub fn sample(pids: &[u32]) -> Samples {
    let all = read_all();
    let page = page_size();
    let hz = ticks_per_s();
    let processes = pids
        .iter()
        .map(|&pid| {
            let u = tree_usage(&all, pid, page);
            (
                pid,
                ProcessSample {
                    alive: u.is_some(),
                    cpu_ticks: u.map_or(0, |u| u.cpu_ticks),
                    ticks_per_s: hz,
                    rss_bytes: u.map_or(0, |u| u.rss_bytes),
                },
            )
        })
        .collect();
    Samples {
        at_ms: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        processes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_parentheses_in_the_command() {
        let s = parse_stat(
            "42 (a) b (c)) S 7 42 42 0 -1 4194560 100 0 0 0 30 12 0 0 20 0 1 0 1 1000 25 18446744073709551615",
        )
        .unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 7);
        assert_eq!(s.ticks, 42);
        assert_eq!(s.rss_pages, 25);
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x)").is_none());
    }

    #[test]
    fn a_tree_sums_descendants_and_not_others() {
        let st = |state, ppid, ticks, rss_pages| Stat {
            state,
            ppid,
            ticks,
            rss_pages,
        };
        let all: HashMap<u32, Stat> = [
            (10, st('S', 1, 5, 1)),
            (11, st('R', 10, 7, 2)),
            (12, st('S', 11, 1, 3)),
            (20, st('S', 1, 100, 100)),
            (30, st('Z', 1, 9, 0)),
        ]
        .into();
        assert_eq!(
            tree_usage(&all, 10, 10),
            Some(Usage {
                cpu_ticks: 13,
                rss_bytes: 60
            })
        );
        assert_eq!(tree_usage(&all, 30, 10), None, "a zombie is gone");
        assert_eq!(tree_usage(&all, 99, 10), None);
    }

    #[test]
    fn host_paths_must_be_absolute_and_clean() {
        assert!(check_host_path("pidfile", "/run/x.pid").is_ok());
        for (p, why) in [
            ("run/x.pid", "not absolute"),
            ("", "empty"),
            ("/run/x\0.pid", "NUL"),
        ] {
            let e = check_host_path("pidfile", p).unwrap_err().to_string();
            assert!(e.contains(why), "{p:?}: {e}");
        }
    }
}
