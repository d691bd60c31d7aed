//! The directory kind through its entry points (`dir::Dir`, as `bellwether shadow start
//! --path DIR` and `restore` call it) on real files, and the bad inputs: a shadow directory of
//! another directory, a missing or damaged point, a damaged or missing chunk, a time before
//! the first point. Each must say what is wrong and leave the live directory untouched.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};

use bellwether_shadow::dir::Dir;
use bellwether_shadow::point::{Retention, Source};
use bellwether_shadow::{
    PointId, Reason, Resource, RestoreRequest, ShadowError, ShadowOptions, ShadowType, Target,
    Timestamp,
};

/// Every entry's type, mode, mtime (to the microsecond, as points keep it) and content.
fn listing(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let us = m.mtime() * 1_000_000 + m.mtime_nsec() / 1000;
            let what = if m.file_type().is_symlink() {
                format!("link {}", fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                format!("dir {:o} {us}", m.mode() & 0o7777)
            } else {
                format!(
                    "file {:o} {us} {:?}",
                    m.mode() & 0o7777,
                    fs::read(&p).unwrap()
                )
            };
            out.insert(rel, what);
        }
    }
    out
}

struct Fixture {
    _tmp: tempfile::TempDir,
    live: PathBuf,
    shadow: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live");
    fs::create_dir_all(live.join("a/b")).unwrap();
    fs::write(live.join("a/b/data.bin"), vec![7u8; 300_000]).unwrap();
    fs::write(live.join("top.txt"), b"version 1\n").unwrap();
    symlink("a/b/data.bin", live.join("link")).unwrap();
    let shadow = tmp.path().join("shadow");
    Fixture {
        live,
        shadow,
        _tmp: tmp,
    }
}

fn opts(f: &Fixture, t: ShadowType) -> ShadowOptions {
    ShadowOptions {
        dir: f.shadow.clone(),
        source: Source::Path(f.live.clone()),
        shadow_type: t,
        points_every: None,
        retention: Retention::default(),
        poll: None,
        clones: bellwether_shadow::point::Clones::Auto,
    }
}

fn req(f: &Fixture, target: Target) -> RestoreRequest {
    RestoreRequest {
        dir: f.shadow.clone(),
        target,
        dest: f.live.clone(),
        elsewhere: false,
    }
}

#[test]
fn points_of_a_directory_restore_by_id_and_by_time() {
    for t in [ShadowType::Full, ShadowType::Differential] {
        let f = fixture();
        let v1 = listing(&f.live);
        let mut sh = Dir.start(&opts(&f, t)).unwrap();
        let points = sh.store().points().unwrap();
        assert_eq!(points.len(), 1, "a base point");
        assert_eq!(points[0].reason, Reason::Base);
        fs::write(f.live.join("top.txt"), b"version 2\n").unwrap();
        fs::write(f.live.join("a/new.txt"), b"new").unwrap();
        let m2 = sh.take_point(Reason::OnDemand).unwrap();
        let v2 = listing(&f.live);
        if t == ShadowType::Differential {
            // Only the changed top.txt and the new file were stored: 0.3 MB stayed shared.
            assert!(m2.new_bytes < 100, "{} new bytes", m2.new_bytes);
        }
        fs::remove_dir_all(f.live.join("a")).unwrap();
        fs::write(f.live.join("later.txt"), b"after the points").unwrap();

        let r = Dir.restore(&req(&f, Target::Point(PointId(1)))).unwrap();
        assert_eq!(r.point, PointId(1));
        assert_eq!(listing(&f.live), v1, "{t}");
        let r = Dir
            .restore(&req(&f, Target::Time(m2.consistent_at)))
            .unwrap();
        assert_eq!(r.point, m2.id());
        assert!(r.checks[0].starts_with("checksums"), "{:?}", r.checks);
        assert_eq!(listing(&f.live), v2, "{t}");
        // The shadow directory's own chain is whole.
        assert!(sh.store().verify(true).is_ok());
    }
}

#[test]
fn a_shadow_of_another_directory_is_refused_and_nothing_changes() {
    let f = fixture();
    let _sh = Dir.start(&opts(&f, ShadowType::Full)).unwrap();
    let other = f.live.parent().unwrap().join("other");
    fs::create_dir(&other).unwrap();
    fs::write(other.join("mine"), b"keep me").unwrap();
    let before = listing(&other);
    let mut r = req(&f, Target::Latest);
    r.dest = other.clone();
    let err = Dir.restore(&r).unwrap_err();
    assert!(matches!(err, ShadowError::OtherResource { .. }), "{err}");
    assert!(err.to_string().contains("nothing was changed"), "{err}");
    assert_eq!(listing(&other), before);
    // And starting a shadow of `other` in the same shadow directory is refused too.
    let mut o = opts(&f, ShadowType::Full);
    o.source = Source::Path(other.clone());
    let err = Dir.start(&o).map(|_| ()).unwrap_err();
    assert!(matches!(err, ShadowError::OtherResource { .. }), "{err}");
}

#[test]
fn a_missing_or_damaged_point_is_named_and_nothing_changes() {
    let f = fixture();
    let mut sh = Dir.start(&opts(&f, ShadowType::Differential)).unwrap();
    fs::write(f.live.join("top.txt"), b"version 2\n").unwrap();
    sh.take_point(Reason::Schedule).unwrap();
    drop(sh);
    fs::write(f.live.join("top.txt"), b"live now\n").unwrap();
    let live = listing(&f.live);

    let err = Dir
        .restore(&req(&f, Target::Point(PointId(7))))
        .unwrap_err();
    assert!(matches!(err, ShadowError::NoSuchPoint { .. }), "{err}");
    assert!(err.to_string().contains("p7"), "{err}");

    let p2 = f.shadow.join("points/0000000002.json");
    let text = fs::read_to_string(&p2).unwrap();
    fs::write(
        &p2,
        text.replace("version", "versiom")
            .replace("\"mode\":420", "\"mode\":511"),
    )
    .unwrap();
    let err = Dir
        .restore(&req(&f, Target::Point(PointId(2))))
        .unwrap_err();
    assert!(matches!(err, ShadowError::DamagedPoint { .. }), "{err}");
    assert!(err.to_string().contains("p2"), "{err}");
    assert_eq!(listing(&f.live), live);

    let err = Dir
        .restore(&req(&f, Target::Time(Timestamp::from_micros(1_000_000))))
        .unwrap_err();
    assert!(
        matches!(
            err,
            ShadowError::BeforeFirstPoint { .. } | ShadowError::DamagedPoint { .. }
        ),
        "{err}"
    );
    assert_eq!(listing(&f.live), live);
}

#[test]
fn a_time_before_the_first_point_is_refused() {
    let f = fixture();
    let _sh = Dir.start(&opts(&f, ShadowType::Full)).unwrap();
    let live = listing(&f.live);
    let err = Dir
        .restore(&req(&f, Target::Time(Timestamp::from_micros(1_000_000))))
        .unwrap_err();
    assert!(matches!(err, ShadowError::BeforeFirstPoint { .. }), "{err}");
    assert!(err.to_string().contains("nothing was changed"), "{err}");
    assert_eq!(listing(&f.live), live);
}

#[test]
fn a_damaged_or_missing_chunk_is_named_and_nothing_changes() {
    let f = fixture();
    let sh = Dir.start(&opts(&f, ShadowType::Full)).unwrap();
    let m = sh.store().points().unwrap().remove(0);
    drop(sh);
    fs::write(f.live.join("top.txt"), b"live now\n").unwrap();
    let live = listing(&f.live);
    let data = m.entries.iter().find(|e| e.path == "a/b/data.bin").unwrap();
    let obj = data.objects[0].id;
    let path = f
        .shadow
        .join("objects")
        .join(&obj.hex()[..2])
        .join(&obj.hex()[2..]);
    let mut bytes = fs::read(&path).unwrap();
    bytes[10] ^= 0xff;
    let mut perm = fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    fs::set_permissions(&path, perm).unwrap();
    fs::write(&path, &bytes).unwrap();
    let err = Dir.restore(&req(&f, Target::Latest)).unwrap_err();
    assert!(matches!(err, ShadowError::BadObject { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("damaged") && msg.contains("a/b/data.bin"),
        "{msg}"
    );
    assert_eq!(listing(&f.live), live);
    let beside: Vec<_> = fs::read_dir(f.live.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        beside.len(),
        2,
        "nothing left beside the live directory: {beside:?}"
    );

    fs::remove_file(&path).unwrap();
    let err = Dir.restore(&req(&f, Target::Latest)).unwrap_err();
    assert!(matches!(err, ShadowError::BadObject { .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
    assert_eq!(listing(&f.live), live);
}

#[test]
fn a_restore_whose_destination_holds_the_shadow_is_refused_and_nothing_changes() {
    let f = fixture();
    let _sh = Dir.start(&opts(&f, ShadowType::Full)).unwrap();
    // The shadow's parent holds both the live directory and the shadow: swapping it for the
    // point's tree would take the shadow away with the old tree.
    let parent = f.live.parent().unwrap().to_path_buf();
    let before = listing(&parent);
    let mut r = req(&f, Target::Latest);
    r.dest = parent.clone();
    r.elsewhere = true;
    let err = Dir.restore(&r).unwrap_err();
    assert!(
        err.to_string().contains("inside the directory it shadows"),
        "{err}"
    );
    assert_eq!(listing(&parent), before);
}

#[test]
fn bad_starts_are_refused_with_the_reason() {
    let f = fixture();
    // The shadow inside the directory it shadows.
    let mut o = opts(&f, ShadowType::Full);
    o.dir = f.live.join("shadow");
    let err = Dir.start(&o).map(|_| ()).unwrap_err();
    assert!(
        err.to_string().contains("inside the directory it shadows"),
        "{err}"
    );
    // The same, named through a link to it and two levels not made yet (a path
    // `canonicalize` cannot resolve as a whole).
    let alias = f.live.parent().unwrap().join("alias");
    symlink(&f.live, &alias).unwrap();
    o.dir = alias.join("backups/shadow");
    let err = Dir.start(&o).map(|_| ()).unwrap_err();
    assert!(
        err.to_string().contains("inside the directory it shadows"),
        "{err}"
    );
    assert!(!f.live.join("backups").exists(), "nothing was created");
    // A directory has no commits to follow.
    let err = Dir
        .start(&opts(&f, ShadowType::Transactional))
        .map(|_| ())
        .unwrap_err();
    assert!(err.to_string().contains("full or differential"), "{err}");
    // A file is not a directory.
    let mut o = opts(&f, ShadowType::Full);
    o.source = Source::Path(f.live.join("top.txt"));
    let err = Dir.start(&o).map(|_| ()).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
    assert!(!f.shadow.join("shadow.json").exists());
}
