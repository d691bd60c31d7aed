//! Running PostgreSQL's programs as argv lists. The client programs (`pg_basebackup`,
//! `pg_receivewal`, `pg_verifybackup`, `pg_controldata`) run as this process's user; the
//! server (`pg_ctl`) runs as the data directory's owner, through `runuser` when this process
//! is root (the server refuses to run as root).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use super::PgShadowError;

pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The argv running `bin args…` as `user` (when this process is root and `user` is given).
pub(crate) fn as_user(user: Option<&str>, bin: &Path, args: &[String]) -> Vec<String> {
    let mut argv = Vec::with_capacity(args.len() + 4);
    if let Some(u) = user.filter(|_| is_root()) {
        argv.extend([
            "runuser".to_string(),
            "-u".into(),
            u.to_string(),
            "--".into(),
        ]);
    }
    argv.push(bin.display().to_string());
    argv.extend(args.iter().cloned());
    argv
}

/// The name of the user owning `path`.
pub(crate) fn owner_of(path: &Path) -> Result<String, PgShadowError> {
    let md = std::fs::metadata(path).map_err(|e| PgShadowError::io("reading", path, e))?;
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(md.uid()))
        .ok()
        .flatten()
        .ok_or_else(|| PgShadowError::Io {
            what: format!("the owner of {}", path.display()),
            message: format!("uid {} has no user name", md.uid()),
        })?;
    Ok(user.name)
}

/// Gives the tree under `root` to `user` (a restored data directory must belong to the user
/// the server runs as). A no-op unless this process is root.
pub(crate) fn chown_tree(root: &Path, user: &str) -> Result<(), PgShadowError> {
    if !is_root() {
        return Ok(());
    }
    let u = nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .ok_or_else(|| PgShadowError::Io {
            what: format!("user {user}"),
            message: "no such user to give the restored data directory to".into(),
        })?;
    let (uid, gid) = (u.uid.as_raw(), u.gid.as_raw());
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid))
            .map_err(|e| PgShadowError::io("chown", &p, e))?;
        let md = std::fs::symlink_metadata(&p).map_err(|e| PgShadowError::io("reading", &p, e))?;
        if md.is_dir() {
            for e in std::fs::read_dir(&p).map_err(|e| PgShadowError::io("listing", &p, e))? {
                let e = e.map_err(|e| PgShadowError::io("listing", &p, e))?;
                stack.push(e.path());
            }
        }
    }
    Ok(())
}

/// Runs `argv` to its end within `limit` (the child is killed past it), with extra
/// environment; an error names the program, what it was for, and its output's tail.
pub(crate) async fn run(
    argv: &[String],
    env: &[(&str, &str)],
    what: &str,
    limit: Duration,
) -> Result<String, PgShadowError> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().map_err(|e| PgShadowError::Program {
        program: program_name(argv),
        what: what.to_string(),
        output: format!("cannot run it: {e}"),
    })?;
    let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(r) => r.map_err(|e| PgShadowError::Program {
            program: program_name(argv),
            what: what.to_string(),
            output: e.to_string(),
        })?,
        Err(_) => {
            return Err(PgShadowError::Program {
                program: program_name(argv),
                what: what.to_string(),
                output: format!("did not finish within {} s", limit.as_secs()),
            })
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(PgShadowError::Program {
            program: program_name(argv),
            what: what.to_string(),
            output: format!(
                "{}: {}",
                out.status,
                tail(&format!("{stdout}{stderr}"), 1500)
            ),
        });
    }
    Ok(stdout)
}

/// The program's file name (after a `runuser … --` prefix).
pub(crate) fn program_name(argv: &[String]) -> String {
    let bin = match argv.iter().position(|a| a == "--") {
        Some(i) if argv[0] == "runuser" => argv.get(i + 1).unwrap_or(&argv[0]),
        _ => &argv[0],
    };
    Path::new(bin)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| bin.clone())
}

/// The last `max` bytes of `s` (on a character boundary), trimmed.
pub(crate) fn tail(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}
