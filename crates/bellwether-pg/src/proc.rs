//! Running PostgreSQL's own programs: as the `postgres` user (through `runuser`) when this
//! process is root, since the server refuses to run as root; as this user otherwise.

use std::path::Path;
use std::process::Command;

use crate::PgError;

/// The OS user the server runs as when this process is root.
pub(crate) const PG_USER: &str = "postgres";

pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The argv that runs `bin args…` as the server's user.
pub(crate) fn pg_argv(bin: &Path, args: &[String]) -> Vec<String> {
    let mut argv = Vec::with_capacity(args.len() + 4);
    if is_root() {
        argv.extend(["runuser", "-u", PG_USER, "--"].map(String::from));
    }
    argv.push(bin.display().to_string());
    argv.extend(args.iter().cloned());
    argv
}

/// A command for `argv` (no shell).
pub(crate) fn command(argv: &[String]) -> Command {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd
}

/// Gives `path` to the server's user when this process is root (a temporary directory the
/// server must write into).
pub(crate) fn chown_to_pg_user(path: &Path) -> Result<(), PgError> {
    if !is_root() {
        return Ok(());
    }
    let user = nix::unistd::User::from_name(PG_USER)
        .ok()
        .flatten()
        .ok_or_else(|| PgError::Io {
            what: format!("user {PG_USER}"),
            message: "running as root needs the postgres user to run the server as; create it (apt install postgresql creates it)".to_string(),
        })?;
    std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw())).map_err(|e| {
        PgError::Io {
            what: format!("chown {} to {PG_USER}", path.display()),
            message: e.to_string(),
        }
    })
}

/// Runs `argv` to the end; an error names the program and carries its output's tail.
pub(crate) fn run(argv: &[String], what: &str) -> Result<String, PgError> {
    let out = command(argv).output().map_err(|e| PgError::Io {
        what: what.to_string(),
        message: format!("cannot run {}: {e}", argv[0]),
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(PgError::Io {
            what: what.to_string(),
            message: format!(
                "{} exited with {}: {}",
                argv.iter()
                    .find(|a| !a.starts_with('-') && *a != "runuser" && *a != PG_USER)
                    .map(String::as_str)
                    .unwrap_or(&argv[0]),
                out.status,
                crate::tail(&format!("{stdout}{stderr}"), 1000)
            ),
        });
    }
    Ok(stdout)
}

/// A free TCP port on the loopback for a test server.
#[cfg(feature = "testing")]
pub(crate) fn free_port() -> Result<u16, PgError> {
    crate::listen_port().map_err(|e| PgError::Io {
        what: "finding a free port".to_string(),
        message: e.to_string(),
    })
}
