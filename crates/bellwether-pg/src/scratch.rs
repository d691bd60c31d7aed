//! Scratch clusters for trial starts: `initdb` once into a temporary directory, then each
//! trial writes a `postgresql.auto.conf` and starts `postgres` (or asks `postgres -C`), reads
//! its log, and stops it. Runs as the `postgres` user when this process is root. Never
//! touches the live instance.
//!
//! Trials may run in parallel (`&self`): each takes a copy of the initdb'd directory from a
//! pool (a new copy is made the first time all are busy) and gives it back after. A trial's
//! server listens on no TCP port (`listen_addresses=''`) and keeps its socket in its own
//! directory, so trials never collide over ports.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bellwether_config::simulate::StartTrial;

use crate::proc::{chown_to_pg_user, command, pg_argv, run};
use crate::PgError;

/// How long a trial server may take to accept connections before the trial counts as a
/// refusal (a server that hangs at start is not one to apply).
const READY_LIMIT: Duration = Duration::from_secs(15);

/// The settings a trial forces on the command line (they would otherwise make trials collide
/// or point at the live instance's files); probing skips them.
pub const FORCED: &[&str] = &[
    "port",
    "listen_addresses",
    "unix_socket_directories",
    "data_directory",
    "config_file",
    "hba_file",
    "ident_file",
    "external_pid_file",
];

pub struct Scratch {
    pub bindir: PathBuf,
    /// The temporary directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// Copies of the initdb'd directory not in use.
    pool: Mutex<Vec<PathBuf>>,
    copies: AtomicUsize,
}

impl Scratch {
    /// `initdb` a scratch cluster with the given binaries (about a second).
    pub fn init(bindir: PathBuf) -> Result<Scratch, PgError> {
        let dir = tempfile::Builder::new()
            .prefix("bw-scratch-")
            .tempdir()
            .map_err(|e| PgError::Io {
                what: "creating a scratch directory".to_string(),
                message: e.to_string(),
            })?;
        chown_to_pg_user(dir.path())?;
        let base = dir.path().join("base");
        run(
            &pg_argv(
                &bindir.join("initdb"),
                &[
                    "-D".into(),
                    base.display().to_string(),
                    "-A".into(),
                    "trust".into(),
                    "-U".into(),
                    "postgres".into(),
                    "-E".into(),
                    "UTF8".into(),
                    "--no-sync".into(),
                    "--no-instructions".into(),
                ],
            ),
            "initdb of a scratch cluster",
        )?;
        // Fast and small; a trial's own values (postgresql.auto.conf) come after and win.
        let conf = base.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).map_err(|e| io_err(&conf, e))?;
        text.push_str("\n# bellwether scratch\nfsync = off\nshared_buffers = 16MB\n");
        std::fs::write(&conf, text).map_err(|e| io_err(&conf, e))?;
        Ok(Scratch {
            bindir,
            dir,
            pool: Mutex::new(Vec::new()),
            copies: AtomicUsize::new(0),
        })
    }

    fn base(&self) -> PathBuf {
        self.dir.path().join("base")
    }

    /// A copy not in use (made when none is free).
    fn take_copy(&self) -> Result<PathBuf, PgError> {
        if let Some(p) = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(p);
        }
        let n = self.copies.fetch_add(1, Ordering::SeqCst);
        let copy = self.dir.path().join(format!("copy{n}"));
        run(
            &[
                "cp".to_string(),
                "-a".to_string(),
                self.base().display().to_string(),
                copy.display().to_string(),
            ],
            "copying the scratch cluster",
        )?;
        let sock = socket_dir(&copy);
        std::fs::create_dir_all(&sock).map_err(|e| io_err(&sock, e))?;
        chown_to_pg_user(&sock)?;
        Ok(copy)
    }

    fn give_back(&self, copy: PathBuf) {
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(copy);
    }

    /// Starts the scratch cluster with `values` (name → value) on top of its defaults, waits
    /// until it accepts connections or exits, stops it. A refused start costs about 0.1 s.
    pub fn try_start(&self, values: &BTreeMap<String, String>) -> Result<StartTrial, PgError> {
        let copy = self.take_copy()?;
        let result = self.trial_on(&copy, values);
        self.give_back(copy);
        result
    }

    fn trial_on(
        &self,
        copy: &Path,
        values: &BTreeMap<String, String>,
    ) -> Result<StartTrial, PgError> {
        let started_at = Instant::now();
        let auto = copy.join("postgresql.auto.conf");
        std::fs::write(&auto, auto_conf_text(values)?).map_err(|e| io_err(&auto, e))?;
        let argv = pg_argv(
            &self.bindir.join("postgres"),
            &[
                "-D".into(),
                copy.display().to_string(),
                "-p".into(),
                "5432".into(),
                "-k".into(),
                socket_dir(copy).display().to_string(),
                "-c".into(),
                "listen_addresses=".into(),
            ],
        );
        let mut child = command(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| PgError::Io {
                what: "starting a trial server".to_string(),
                message: format!("cannot run {}: {e}", argv[0]),
            })?;
        let stderr = child.stderr.take().ok_or_else(|| PgError::Io {
            what: "starting a trial server".to_string(),
            message: "no stderr pipe".to_string(),
        })?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let pid_file = copy.join("postmaster.pid");
        let mut lines = Vec::new();
        let outcome = loop {
            match rx.recv_timeout(Duration::from_millis(5)) {
                Ok(line) => {
                    let ready = line.contains("ready to accept connections");
                    lines.push(line);
                    if ready {
                        break Outcome::Ready;
                    }
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    // The server may have sent its log elsewhere (logging_collector); its
                    // exit is what counts. Wait for it a little without spinning.
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            if let Some(status) = child.try_wait().map_err(|e| PgError::Io {
                what: "waiting for a trial server".to_string(),
                message: e.to_string(),
            })? {
                break Outcome::Exited(status);
            }
            if pid_file_ready(&pid_file) {
                break Outcome::Ready;
            }
            if started_at.elapsed() > READY_LIMIT {
                break Outcome::Hung;
            }
        };
        if !matches!(outcome, Outcome::Exited(_)) {
            stop_trial(&pid_file, &mut child);
        }
        let _ = child.wait();
        // The pipe closes when every server process is gone; take what is left.
        let _ = reader.join();
        lines.extend(rx.try_iter());
        let ms = started_at.elapsed().as_millis() as u64;
        Ok(match outcome {
            Outcome::Ready => StartTrial {
                started: true,
                message: String::new(),
                ms,
            },
            Outcome::Exited(status) => StartTrial {
                started: false,
                message: refusal_message(&lines, &format!("the server exited with {status}")),
                ms,
            },
            Outcome::Hung => StartTrial {
                started: false,
                message: refusal_message(
                    &lines,
                    &format!("the server did not accept connections within {READY_LIMIT:?}"),
                ),
                ms,
            },
        })
    }

    /// `postgres -C name` with `values` set: what the server computes for `name`, or the
    /// error it gives for the values.
    pub fn show(
        &self,
        name: &str,
        values: &BTreeMap<String, String>,
    ) -> Result<Result<String, String>, PgError> {
        let mut args = vec![
            "-D".to_string(),
            self.base().display().to_string(),
            "-C".to_string(),
            name.to_string(),
        ];
        for (k, v) in values {
            args.push("-c".into());
            args.push(format!("{k}={v}"));
        }
        let argv = pg_argv(&self.bindir.join("postgres"), &args);
        let out = command(&argv).output().map_err(|e| PgError::Io {
            what: format!("postgres -C {name}"),
            message: format!("cannot run {}: {e}", argv[0]),
        })?;
        if out.status.success() {
            Ok(Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()))
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<String> = stderr.lines().map(str::to_string).collect();
            Ok(Err(refusal_message(
                &lines,
                &format!("postgres -C exited with {}", out.status),
            )))
        }
    }
}

enum Outcome {
    Ready,
    Exited(std::process::ExitStatus),
    Hung,
}

fn io_err(path: &Path, e: std::io::Error) -> PgError {
    PgError::Io {
        what: path.display().to_string(),
        message: e.to_string(),
    }
}

fn socket_dir(copy: &Path) -> PathBuf {
    let mut s = copy.as_os_str().to_owned();
    s.push(".sock");
    PathBuf::from(s)
}

/// The trial's `postgresql.auto.conf`: each value single-quoted with `'` and `\` escaped.
/// Names must look like setting names (they come from a catalog).
fn auto_conf_text(values: &BTreeMap<String, String>) -> Result<String, PgError> {
    let mut text = String::from("# bellwether trial\n");
    for (k, v) in values {
        let ok = !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !ok {
            return Err(PgError::Value(
                bellwether_config::setting::ValueError::UnknownSetting {
                    name: k.clone(),
                    suggestion: None,
                },
            ));
        }
        if v.chars().any(|c| c.is_control()) {
            return Err(PgError::Value(
                bellwether_config::setting::ValueError::BadValue {
                    name: k.clone(),
                    value: v.clone(),
                    expected: "a value without line breaks or control characters".to_string(),
                },
            ));
        }
        let escaped = v.replace('\\', "\\\\").replace('\'', "''");
        text.push_str(&format!("{k} = '{escaped}'\n"));
    }
    Ok(text)
}

/// `postmaster.pid`'s status line says `ready` once the server accepts connections.
fn pid_file_ready(pid_file: &Path) -> bool {
    std::fs::read_to_string(pid_file)
        .map(|t| t.lines().nth(7).is_some_and(|l| l.trim() == "ready"))
        .unwrap_or(false)
}

/// Stops a trial server: fast shutdown (SIGINT to the postmaster named in `postmaster.pid`,
/// else to the child), then immediate shutdown (SIGQUIT) if it is still there after 3 s (a
/// trial value can make a backend sleep through a fast shutdown, `post_auth_delay`), then
/// SIGKILL after 5 s more. Returns when the child has exited.
fn stop_trial(pid_file: &Path, child: &mut std::process::Child) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pid = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
    let target = Pid::from_raw(pid.unwrap_or(child.id() as i32));
    for (signal, grace) in [
        (Signal::SIGINT, Duration::from_secs(3)),
        (Signal::SIGQUIT, Duration::from_secs(5)),
    ] {
        if kill(target, signal).is_err() {
            break;
        }
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            // The child's exit has no event to wait on with a deadline; look again shortly.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let _ = kill(target, Signal::SIGKILL);
    let _ = child.kill();
}

/// The server's lines when it refused (its `LOG` lines name a refused value, its `FATAL` the
/// conflict), or `fallback` when it said nothing.
pub(crate) fn refusal_message(lines: &[String], fallback: &str) -> String {
    let chosen: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| !l.trim().is_empty())
        .collect();
    if chosen.is_empty() {
        fallback.to_string()
    } else {
        crate::tail(&chosen.join("\n"), 2000)
    }
}
