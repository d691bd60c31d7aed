//! Every case runs twice: through the kernel's `openat2` and through the walk a kernel
//! without it gets, and both must answer the same.

use super::*;
use std::os::unix::fs::{symlink, PermissionsExt as _};

const BOTH: [Resolver; 2] = [Resolver::Auto, Resolver::Walk];

/// A root and, next to it, a directory outside it holding a secret.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "outside\n").unwrap();
    std::fs::write(outside.join("version"), "outside version\n").unwrap();
    Fixture {
        _tmp: tmp,
        root,
        outside,
    }
}

fn open(root: &Path, r: Resolver) -> InRoot {
    InRoot::open(root).unwrap().with_resolver(r)
}

#[test]
fn this_kernel_has_openat2_so_the_auto_path_is_the_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let fd = rustix::fs::open(dir.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
    match rustix::fs::openat2(&fd, ".", OFlags::PATH, Mode::empty(), ResolveFlags::IN_ROOT) {
        Ok(_) => {}
        Err(e) => panic!(
            "openat2 failed here ({e}); the tests of the Auto resolver would test only the walk. \
             Run them on Linux 5.6 or later without a seccomp filter on openat2"
        ),
    }
}

#[test]
fn links_inside_the_root_are_followed_as_in_a_chroot() {
    for r in BOTH {
        let f = fixture();
        std::fs::create_dir_all(f.root.join("usr/lib")).unwrap();
        std::fs::write(f.root.join("usr/lib/os-release"), "ID=debian\n").unwrap();
        symlink("../usr/lib/os-release", f.root.join("etc/os-release")).unwrap();
        symlink("/usr/lib", f.root.join("etc/abs")).unwrap();
        let root = open(&f.root, r);
        assert_eq!(
            root.read("etc/os-release").unwrap(),
            b"ID=debian\n",
            "{r:?}"
        );
        // An absolute target starts again at the root, not at this machine's `/`.
        assert_eq!(
            root.read("etc/abs/os-release").unwrap(),
            b"ID=debian\n",
            "{r:?}"
        );
        assert_eq!(root.list("etc/abs").unwrap(), vec!["os-release"], "{r:?}");
        assert!(
            root.exists("etc/abs/os-release") && root.is_dir("etc/abs"),
            "{r:?}"
        );
        // `..` stops at the root.
        assert_eq!(
            root.read("../../etc/os-release").unwrap(),
            b"ID=debian\n",
            "{r:?}"
        );
    }
}

#[test]
fn a_link_to_a_file_outside_is_never_read() {
    for r in BOTH {
        let f = fixture();
        let secret = f.outside.join("secret");
        symlink(&secret, f.root.join("etc/app.conf")).unwrap();
        symlink("../../outside/secret", f.root.join("etc/rel.conf")).unwrap();
        let root = open(&f.root, r);
        let err = root.read("etc/app.conf").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{r:?}: {err}");
        let text = err.to_string();
        assert!(
            text.starts_with("etc/app.conf: ")
                && text.contains(&format!(
                    "etc/app.conf is a symbolic link to {:?}",
                    secret.display().to_string()
                )),
            "{r:?}: {text}"
        );
        assert!(!root.exists("etc/app.conf"), "{r:?}");
        // A relative link that climbs out stops at the root: it is the root's `outside/secret`.
        assert_eq!(
            root.read("etc/rel.conf").unwrap_err().kind(),
            io::ErrorKind::NotFound,
            "{r:?}"
        );
        std::fs::create_dir_all(f.root.join("outside")).unwrap();
        std::fs::write(f.root.join("outside/secret"), "the root's own\n").unwrap();
        assert_eq!(
            root.read("etc/rel.conf").unwrap(),
            b"the root's own\n",
            "{r:?}"
        );
        // And the absolute one is the root's copy of that path, if it has one.
        let in_root = f.root.join(secret.strip_prefix("/").unwrap());
        std::fs::create_dir_all(in_root.parent().unwrap()).unwrap();
        std::fs::write(&in_root, "in the root\n").unwrap();
        assert_eq!(
            root.read("etc/app.conf").unwrap(),
            b"in the root\n",
            "{r:?}"
        );
    }
}

#[test]
fn a_write_under_a_directory_linked_outside_fails_and_writes_nothing() {
    for r in BOTH {
        let f = fixture();
        symlink(&f.outside, f.root.join("etc/websvc")).unwrap();
        let root = open(&f.root, r);
        let err = root.write_atomic("etc/websvc/version", b"2\n").unwrap_err();
        assert_eq!(err.path(), "etc/websvc/version");
        assert!(
            err.to_string().contains("etc/websvc is a symbolic link to"),
            "{r:?}: {err}"
        );
        assert_eq!(
            std::fs::read_to_string(f.outside.join("version")).unwrap(),
            "outside version\n",
            "{r:?}"
        );
        assert_eq!(
            std::fs::read_dir(&f.outside).unwrap().count(),
            2,
            "{r:?}: nothing new outside"
        );
        // Nothing was created inside either: a link is never made into a directory.
        assert!(
            !f.root.join(f.outside.strip_prefix("/").unwrap()).exists(),
            "{r:?}"
        );
        // A relative link that climbs out is clamped at the root: no such directory there.
        std::fs::remove_file(f.root.join("etc/websvc")).unwrap();
        symlink("../../outside", f.root.join("etc/websvc")).unwrap();
        assert!(
            root.write_atomic("etc/websvc/version", b"2\n").is_err(),
            "{r:?}"
        );
        assert_eq!(
            std::fs::read_to_string(f.outside.join("version")).unwrap(),
            "outside version\n",
            "{r:?}"
        );
    }
}

#[test]
fn a_link_at_the_name_is_replaced_not_written_through() {
    for r in BOTH {
        let f = fixture();
        symlink(f.outside.join("secret"), f.root.join("etc/app.conf")).unwrap();
        let root = open(&f.root, r);
        root.write_atomic("etc/app.conf", b"mine\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(f.outside.join("secret")).unwrap(),
            "outside\n"
        );
        let meta = std::fs::symlink_metadata(f.root.join("etc/app.conf")).unwrap();
        assert!(meta.is_file(), "{r:?}: the link was replaced by the file");
        assert_eq!(
            std::fs::read_to_string(f.root.join("etc/app.conf")).unwrap(),
            "mine\n"
        );
    }
}

#[test]
fn a_planted_temporary_name_is_never_opened() {
    for r in BOTH {
        let f = fixture();
        std::fs::write(f.root.join("etc/app.conf"), "old\n").unwrap();
        // The name the agent used to use, planted as a link to a file outside.
        symlink(
            f.outside.join("secret"),
            f.root.join("etc/.app.conf.bellwether-tmp"),
        )
        .unwrap();
        let root = open(&f.root, r);
        root.write_atomic("etc/app.conf", b"new\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(f.outside.join("secret")).unwrap(),
            "outside\n"
        );
        assert_eq!(
            std::fs::read_to_string(f.root.join("etc/app.conf")).unwrap(),
            "new\n"
        );
        // The planted link is left as it was, and no temporary file is left behind.
        let names: Vec<String> = std::fs::read_dir(f.root.join("etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{r:?}: {names:?}");
    }
    // Whatever name is drawn, creation is exclusive and does not follow a link there.
    let f = fixture();
    symlink(f.outside.join("secret"), f.root.join("etc/.x.bellwether-0")).unwrap();
    let dir = rustix::fs::open(
        f.root.join("etc"),
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
    )
    .unwrap();
    let err = create_exclusive(&dir, ".x.bellwether-0", 0o600).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    std::fs::write(f.root.join("etc/.x.bellwether-1"), "").unwrap();
    let err = create_exclusive(&dir, ".x.bellwether-1", 0o600).unwrap_err();
    assert_eq!(
        err.kind(),
        io::ErrorKind::AlreadyExists,
        "an existing file is never reused"
    );
    assert_eq!(
        std::fs::read_to_string(f.outside.join("secret")).unwrap(),
        "outside\n"
    );
}

#[test]
fn writes_create_missing_directories_and_keep_permissions() {
    for r in BOTH {
        let f = fixture();
        let root = open(&f.root, r);
        root.write_atomic("etc/websvc/version", b"1\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(f.root.join("etc/websvc/version")).unwrap(),
            "1\n"
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&f.root.join("etc/websvc/version")), 0o644);
        std::fs::set_permissions(
            f.root.join("etc/websvc/version"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        root.write_atomic("etc/websvc/version", b"2\n").unwrap();
        assert_eq!(mode(&f.root.join("etc/websvc/version")), 0o600, "{r:?}");
        // Through an in-root link to a directory, the write lands in the link's target.
        std::fs::create_dir_all(f.root.join("opt/svc")).unwrap();
        symlink("/opt/svc", f.root.join("etc/svc")).unwrap();
        root.write_atomic("etc/svc/version", b"3\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(f.root.join("opt/svc/version")).unwrap(),
            "3\n"
        );
        for bad in ["", "etc/..", "etc/."] {
            let err = root.write_atomic(bad, b"x").unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }
}

#[test]
fn link_loops_end_with_an_error() {
    for r in BOTH {
        let f = fixture();
        symlink("b", f.root.join("etc/a")).unwrap();
        symlink("a", f.root.join("etc/b")).unwrap();
        let root = open(&f.root, r);
        let err = root.read("etc/a").unwrap_err();
        assert!(
            err.to_string().contains("symbolic link") || err.to_string().contains("Too many"),
            "{r:?}: {err}"
        );
        assert!(root.write_atomic("etc/a/x", b"x").is_err(), "{r:?}");
    }
}

#[test]
fn in_place_writes_follow_the_same_rules() {
    for r in BOTH {
        let f = fixture();
        std::fs::write(f.root.join("cpu.max"), "max\n").unwrap();
        symlink(f.outside.join("secret"), f.root.join("memory.max")).unwrap();
        let root = open(&f.root, r);
        root.write_in_place("cpu.max", b"50000 100000\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(f.root.join("cpu.max")).unwrap(),
            "50000 100000\n"
        );
        assert!(root.write_in_place("memory.max", b"1G\n").is_err(), "{r:?}");
        assert_eq!(
            std::fs::read_to_string(f.outside.join("secret")).unwrap(),
            "outside\n"
        );
    }
}

#[test]
fn the_walk_reads_this_machines_proc_through_its_links() {
    // /proc/net is a link to self/net, and /proc/self one to the process's directory.
    let a = open(Path::new("/"), Resolver::Auto)
        .read("proc/net/dev")
        .unwrap();
    let w = open(Path::new("/"), Resolver::Walk)
        .read("proc/net/dev")
        .unwrap();
    assert!(
        !a.is_empty() && a.starts_with(b"Inter-"),
        "{}",
        String::from_utf8_lossy(&a)
    );
    assert_eq!(
        a.split(|b| *b == b'\n').next(),
        w.split(|b| *b == b'\n').next()
    );
}
