//! Processes the harnesses start and watch: a child that is killed when dropped, the
//! `bellwether server` subprocess, and a process's CPU time and resident memory from `/proc`.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{BenchError, Context as _, Result};

/// A child killed and reaped when dropped.
#[derive(Debug)]
pub struct Reaped(pub Child);

impl Reaped {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The last `lines` lines of a log file (empty when it cannot be read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// 32 random bytes from the OS as 64 hex characters: a token nobody else knows.
pub fn random_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    let mut filled = 0;
    while filled < bytes.len() {
        filled +=
            rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty())
                .map_err(std::io::Error::from)
                .context("could not read random bytes from the OS")?;
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The tokens a harness gives the server it starts.
#[derive(Debug, Clone)]
pub struct ServerTokens {
    pub admin: String,
    pub operator: String,
    pub enrol: String,
}

impl ServerTokens {
    pub fn random() -> Result<ServerTokens> {
        Ok(ServerTokens {
            admin: random_token()?,
            operator: random_token()?,
            enrol: random_token()?,
        })
    }
}

/// A `bellwether server` subprocess on a free loopback port.
#[derive(Debug)]
pub struct ServerProcess {
    pub child: Reaped,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    pub log: PathBuf,
}

impl ServerProcess {
    /// Starts `exe server` with its data in `dir` (the SQLite store too, unless `database`),
    /// the given tokens and `extra` flags, and waits (up to 60 s) for the address it prints
    /// as its first line. Its log (stderr) goes to `dir/server.log`.
    pub fn start(
        exe: &Path,
        dir: &Path,
        database: Option<&str>,
        tokens: &ServerTokens,
        extra: &[&str],
    ) -> Result<ServerProcess> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
        let log = dir.join("server.log");
        let mut cmd = Command::new(exe);
        cmd.args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("data"))
            .args(extra)
            .env("BELLWETHER_ADMIN_TOKEN", &tokens.admin)
            .env("BELLWETHER_OPERATOR_TOKEN", &tokens.operator)
            .env("BELLWETHER_ENROL_TOKEN", &tokens.enrol)
            .env_remove("BELLWETHER_DATABASE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(
                std::fs::File::create(&log)
                    .with_context(|| format!("could not create {}", log.display()))?,
            );
        if let Some(url) = database {
            cmd.arg("--database").arg(url);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("could not start {} server", exe.display()))?;
        let stdout = child
            .stdout
            .take()
            .context("the server's stdout is piped")?;
        let child = Reaped(child);
        // The first line names the address; the rest is read (and dropped) until the server
        // exits, so its writes never block on a full pipe.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            for _ in lines {}
        });
        let first = rx.recv_timeout(Duration::from_secs(60)).map_err(|_| {
            BenchError::Failed(format!(
                "the server did not start; its log ends:\n{}",
                log_tail(&log, 10)
            ))
        })?;
        let url = first
            .strip_prefix("listening on ")
            .with_context(|| format!("the server's first line is not its address: {first:?}"))?
            .trim()
            .to_owned();
        Ok(ServerProcess { child, url, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A process's CPU time so far (user + system) and its resident memory now and at its peak.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub rss_kb: u64,
    pub hwm_kb: u64,
}

/// Reads [`Usage`] of `pid` from `/proc/PID/stat` and `/proc/PID/status`.
pub fn usage(pid: u32) -> Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("could not read /proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("could not read /proc/{pid}/status"))?;
    let ticks = cpu_ticks(&stat).with_context(|| format!("/proc/{pid}/stat has no CPU times"))?;
    let field = |name: &str| -> Result<u64> {
        status_kb(&status, name).with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok(Usage {
        cpu_seconds: ticks as f64 / rustix::param::clock_ticks_per_second() as f64,
        rss_kb: field("VmRSS:")?,
        hwm_kb: field("VmHWM:")?,
    })
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line; the command name in
/// parentheses may hold spaces and parentheses, so fields count from the last `)`.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) is index 11 and stime (15) index 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` field (`VmRSS:`, `VmHWM:`) of `/proc/PID/status`.
pub fn status_kb(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_count_from_the_last_parenthesis() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1000 1 1";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(cpu_ticks("garbage"), None);
        assert_eq!(cpu_ticks("1 (x) S 1"), None);
    }

    #[test]
    fn status_fields_are_read_in_kb() {
        let status = "Name:\tbellwether\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_kb(status, "VmRSS:"), Some(10240));
        assert_eq!(status_kb(status, "VmHWM:"), Some(20480));
        assert_eq!(status_kb(status, "VmSwap:"), None);
    }

    #[test]
    fn this_process_has_usage() {
        let u = usage(std::process::id()).unwrap();
        assert!(u.rss_kb > 0 && u.hwm_kb >= u.rss_kb, "{u:?}");
    }
}
