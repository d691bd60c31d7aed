use super::*;

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

#[test]
fn writes_and_replaces_without_leaving_a_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    write_atomic(&path, b"one").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"one");
    write_atomic(&path, b"two, longer").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"two, longer");
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

#[cfg(unix)]
#[test]
fn a_mode_is_the_files_from_its_creation() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.token");
    // A readable file is replaced by a secret: the secret must not inherit its mode.
    std::fs::write(&path, "old").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    AtomicWrite::new()
        .mode(0o600)
        .write(&path, b"s3cret\n")
        .unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // An explicit mode is not narrowed by the umask either.
    AtomicWrite::new().mode(0o664).write(&path, b"x").unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o664);
}

#[test]
fn the_directory_is_created_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/journal.json");
    let err = write_atomic(&path, b"x").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    AtomicWrite::new()
        .create_parent()
        .write(&path, b"x")
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"x");
}

#[test]
fn a_failed_write_keeps_the_target_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    // The target is a non-empty directory: the rename fails after the temporary file was
    // written and synced.
    let path = dir.path().join("report.json");
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("keep"), "kept").unwrap();
    assert!(write_atomic(&path, b"x").is_err());
    assert_eq!(std::fs::read_to_string(path.join("keep")).unwrap(), "kept");
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

#[test]
fn a_path_without_a_file_name_is_refused() {
    let err = write_atomic(Path::new("/"), b"x").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn concurrent_writers_each_leave_a_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.json");
    let bodies: Vec<Vec<u8>> = (0..8u8).map(|i| vec![b'a' + i; 64 * 1024]).collect();
    std::thread::scope(|s| {
        for body in &bodies {
            let path = &path;
            s.spawn(move || {
                for _ in 0..10 {
                    write_atomic(path, body).unwrap();
                }
            });
        }
    });
    let got = std::fs::read(&path).unwrap();
    assert!(bodies.contains(&got), "a torn file of {} bytes", got.len());
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}
