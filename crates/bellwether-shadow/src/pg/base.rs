//! Base backups: `pg_basebackup` in plain format with its WAL streamed alongside (`-X
//! stream`), so each is consistent on its own, and a `backup_manifest` (SHA-256 per file)
//! that `pg_verifybackup` checks before a restore uses it.

use std::path::{Path, PathBuf};

use super::proc::run;
use super::{now_us, read_json, write_json, Lsn, PgBase, PgShadowError};

/// Takes a base backup of `url` into `base_dir/ID` (written as `ID.tmp`, renamed when
/// complete; `ID.json` last, so a base without it is an unfinished one).
pub(crate) async fn take(
    bindir: &Path,
    url: &str,
    base_dir: &Path,
    id: &str,
    limit: std::time::Duration,
) -> Result<PgBase, PgShadowError> {
    std::fs::create_dir_all(base_dir).map_err(|e| PgShadowError::io("creating", base_dir, e))?;
    let tmp = base_dir.join(format!("{id}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| PgShadowError::io("removing", &tmp, e))?;
    }
    let started_at_us = now_us();
    let argv = vec![
        bindir.join("pg_basebackup").display().to_string(),
        "-d".into(),
        url.to_string(),
        "-D".into(),
        tmp.display().to_string(),
        "-F".into(),
        "p".into(),
        "-X".into(),
        "stream".into(),
        "-c".into(),
        "fast".into(),
        "--manifest-checksums=SHA256".into(),
    ];
    let result = run(
        &argv,
        &[("PGAPPNAME", "bellwether_base_backup")],
        "base backup of the primary",
        limit,
    )
    .await;
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let finished_at_us = now_us();
    let (timeline, start_lsn, end_lsn) = manifest_range(&tmp.join("backup_manifest"))?;
    let bytes = tree_size(&tmp)?;
    let dest = base_dir.join(id);
    std::fs::rename(&tmp, &dest).map_err(|e| PgShadowError::io("renaming", &tmp, e))?;
    let base = PgBase {
        id: id.to_string(),
        timeline,
        start_lsn,
        end_lsn,
        started_at_us,
        finished_at_us,
        bytes,
    };
    write_json(&base_dir.join(format!("{id}.json")), &base)?;
    Ok(base)
}

/// The finished bases in `base_dir`, oldest first (by end LSN).
pub(crate) fn list(base_dir: &Path) -> Result<Vec<PgBase>, PgShadowError> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(base_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(PgShadowError::io("listing", base_dir, e)),
    };
    for e in rd {
        let e = e.map_err(|e| PgShadowError::io("listing", base_dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(id) = name.strip_suffix(".json") {
            let b: PgBase = read_json(&e.path())?;
            if b.id != id || !base_dir.join(id).is_dir() {
                return Err(PgShadowError::BadShadow {
                    path: e.path(),
                    message: format!("names base {:?} but {}/ is missing", b.id, id),
                });
            }
            out.push(b);
        }
    }
    out.sort_by_key(|b| (b.end_lsn, b.finished_at_us));
    Ok(out)
}

pub(crate) fn path_of(base_dir: &Path, id: &str) -> PathBuf {
    base_dir.join(id)
}

/// The timeline and WAL range a base needs, from its `backup_manifest` (`WAL-Ranges`).
fn manifest_range(path: &Path) -> Result<(u32, Lsn, Lsn), PgShadowError> {
    #[derive(serde::Deserialize)]
    struct Range {
        #[serde(rename = "Timeline")]
        timeline: u32,
        #[serde(rename = "Start-LSN")]
        start: Lsn,
        #[serde(rename = "End-LSN")]
        end: Lsn,
    }
    #[derive(serde::Deserialize)]
    struct Manifest {
        #[serde(rename = "WAL-Ranges")]
        wal_ranges: Vec<Range>,
    }
    let m: Manifest = read_json(path)?;
    let first = m
        .wal_ranges
        .first()
        .ok_or_else(|| PgShadowError::BadShadow {
            path: path.to_path_buf(),
            message: "no WAL-Ranges entry".into(),
        })?;
    let last = m.wal_ranges.last().unwrap_or(first);
    Ok((last.timeline, first.start, last.end))
}

/// Bytes under `root` (files only).
pub(crate) fn tree_size(root: &Path) -> Result<u64, PgShadowError> {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).map_err(|e| PgShadowError::io("reading", &p, e))?;
        if md.is_dir() {
            for e in std::fs::read_dir(&p).map_err(|e| PgShadowError::io("listing", &p, e))? {
                stack.push(e.map_err(|e| PgShadowError::io("listing", &p, e))?.path());
            }
        } else {
            total += md.len();
        }
    }
    Ok(total)
}

/// Copies the tree `from` to `to` (which must not exist), keeping permissions; file copies use
/// `copy_file_range`, which shares extents (a reflink) where the filesystem can.
pub(crate) fn copy_tree(from: &Path, to: &Path) -> Result<(), PgShadowError> {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![(from.to_path_buf(), to.to_path_buf())];
    while let Some((src, dst)) = stack.pop() {
        let md =
            std::fs::symlink_metadata(&src).map_err(|e| PgShadowError::io("reading", &src, e))?;
        if md.is_dir() {
            std::fs::create_dir(&dst).map_err(|e| PgShadowError::io("creating", &dst, e))?;
            std::fs::set_permissions(
                &dst,
                std::fs::Permissions::from_mode(md.permissions().mode() & 0o7777),
            )
            .map_err(|e| PgShadowError::io("setting the mode of", &dst, e))?;
            for e in std::fs::read_dir(&src).map_err(|e| PgShadowError::io("listing", &src, e))? {
                let e = e.map_err(|e| PgShadowError::io("listing", &src, e))?;
                stack.push((e.path(), dst.join(e.file_name())));
            }
        } else if md.file_type().is_symlink() {
            let target =
                std::fs::read_link(&src).map_err(|e| PgShadowError::io("reading", &src, e))?;
            std::os::unix::fs::symlink(&target, &dst)
                .map_err(|e| PgShadowError::io("creating", &dst, e))?;
        } else {
            std::fs::copy(&src, &dst).map_err(|e| PgShadowError::io("copying", &src, e))?;
        }
    }
    Ok(())
}
