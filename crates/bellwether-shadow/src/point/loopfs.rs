//! Copy-on-write file systems for tests and benchmarks on a machine whose disk has none: a
//! sparse image file formatted as btrfs or XFS (`mkfs.xfs -m reflink=1`) and mounted with
//! `mount -o loop` on a directory, unmounted (and the image removed) when dropped. Making
//! one needs root (or `CAP_SYS_ADMIN`) and the file system's tools (`btrfs-progs`,
//! `xfsprogs`); without them [`LoopFs::mount`] fails with a message that says so.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

/// A copy-on-write file system a [`LoopFs`] can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CowFs {
    Btrfs,
    Xfs,
}

impl CowFs {
    pub const ALL: [CowFs; 2] = [CowFs::Btrfs, CowFs::Xfs];

    fn mkfs(self) -> (&'static str, &'static [&'static str], &'static str) {
        match self {
            CowFs::Btrfs => ("mkfs.btrfs", &["-q", "-f"], "btrfs-progs"),
            CowFs::Xfs => ("mkfs.xfs", &["-q", "-f", "-m", "reflink=1"], "xfsprogs"),
        }
    }
}

impl fmt::Display for CowFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CowFs::Btrfs => "btrfs",
            CowFs::Xfs => "xfs",
        })
    }
}

impl FromStr for CowFs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "btrfs" => Ok(CowFs::Btrfs),
            "xfs" => Ok(CowFs::Xfs),
            _ => Err(format!(
                "`{s}` is not a copy-on-write file system this makes (btrfs, xfs)"
            )),
        }
    }
}

/// A mounted loop file system; unmounted and its image removed on drop.
#[derive(Debug)]
pub struct LoopFs {
    fs: CowFs,
    image: PathBuf,
    mount: PathBuf,
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

const HOW: &str = "a copy-on-write loop mount needs root (or CAP_SYS_ADMIN), the loop driver and the file system's tools: as root, `apt-get install btrfs-progs xfsprogs`, or mount one yourself (`truncate -s 8G img && mkfs.btrfs img && mount -o loop img DIR`) and point the run at DIR";

impl LoopFs {
    /// Makes a sparse image of `bytes` at `image`, formats it as `fs` and mounts it on
    /// `mount` (created if missing).
    pub fn mount(fs: CowFs, image: &Path, mount: &Path, bytes: u64) -> Result<LoopFs, String> {
        let (mkfs, args, package) = fs.mkfs();
        std::fs::create_dir_all(mount).map_err(|e| format!("{}: {e}", mount.display()))?;
        let f = std::fs::File::create(image).map_err(|e| format!("{}: {e}", image.display()))?;
        f.set_len(bytes)
            .map_err(|e| format!("{}: {e}", image.display()))?;
        drop(f);
        let made = run(Command::new(mkfs).args(args).arg(image), mkfs)
            .map_err(|e| format!("{e} (package {package}); {HOW}"))
            .and_then(|()| {
                run(
                    Command::new("mount")
                        .args(["-o", "loop"])
                        .arg(image)
                        .arg(mount),
                    "mount -o loop",
                )
                .map_err(|e| format!("{e}; {HOW}"))
            });
        if let Err(e) = made {
            let _ = std::fs::remove_file(image);
            return Err(format!(
                "making a {fs} file system at {}: {e}",
                mount.display()
            ));
        }
        let lfs = LoopFs {
            fs,
            image: image.to_owned(),
            mount: mount.to_owned(),
        };
        if !super::cow_supported(mount) {
            return Err(format!(
                "{} is mounted as {fs} but refuses FICLONE (kernel without reflink support for {fs}?)",
                mount.display()
            ));
        }
        Ok(lfs)
    }

    pub fn path(&self) -> &Path {
        &self.mount
    }

    pub fn fs(&self) -> CowFs {
        self.fs
    }
}

/// Bytes in use on the file system holding `p`, as it counts them (shared blocks once):
/// everything is written out first (`syncfs`), since delayed allocation and btrfs's lazy
/// accounting would otherwise leave recent writes out.
pub fn blocks_in_use(p: &Path) -> std::io::Result<u64> {
    let d = std::fs::File::open(p)?;
    rustix::fs::syncfs(&d)?;
    let s = rustix::fs::statvfs(p)?;
    Ok((s.f_blocks - s.f_bfree) * s.f_frsize)
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mount)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
        let _ = std::fs::remove_dir(&self.mount);
        let _ = std::fs::remove_file(&self.image);
    }
}
