//! A small file system for the disk-full fault: a tmpfs of a given size mounted on a
//! directory of the drill's own (`mount -t tmpfs -o size=N`, which needs root or
//! `CAP_SYS_ADMIN`), unmounted when dropped. Without the privilege the drill says so and
//! how to get it; it does not fall back to pretending.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    pub fn mount(dir: &Path, bytes: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes},mode=0755"))
            .arg("tmpfs")
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs on {} failed ({}): {}; the disk-full fault needs root or CAP_SYS_ADMIN (run the drill as root, or choose --fault corrupt|kill-writer)",
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // A lazy unmount when something still holds the file system (a process of the run
        // that has not been reaped yet), so no mount outlives the run.
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}
