//! `bellwether server` on a damaged SQLite store: it refuses to start (exit code 2) with an
//! error naming the file, never starts afresh, and leaves the store file and the token files
//! exactly as they were.

mod support;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Guard, EXE};

/// The server command without fixed tokens: a start on an empty data dir generates both and
/// writes them to `operator.token` and `enrol.token`.
fn server_args(data_dir: &Path, addr_file: &Path) -> Vec<String> {
    vec![
        "server".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--addr-file".into(),
        addr_file.display().to_string(),
    ]
}

fn command(args: &[String]) -> Command {
    let mut cmd = Command::new(EXE);
    cmd.args(args)
        .stdin(Stdio::null())
        .env("NO_COLOR", "1")
        .env_remove("BELLWETHER_OPERATOR_TOKEN")
        .env_remove("BELLWETHER_ENROL_TOKEN")
        .env_remove("BELLWETHER_DATABASE")
        .env_remove("BELLWETHER_DATA_DIR");
    cmd
}

/// Starts a server on a fresh data dir, waits until it listens, and stops it with SIGTERM:
/// the data dir then holds a store and two generated token files.
fn first_start(dir: &Path) -> PathBuf {
    let data_dir = dir.join("data");
    let (mut guard, _) = start(dir, &data_dir, "first");
    let status = guard.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status}: {}", guard.log_text());
    for f in ["bellwether.db", "operator.token", "enrol.token"] {
        assert!(data_dir.join(f).is_file(), "no {f} after the first start");
    }
    data_dir
}

struct Snapshot(Vec<(PathBuf, Vec<u8>)>);

impl Snapshot {
    fn take(data_dir: &Path) -> Snapshot {
        Snapshot(
            ["bellwether.db", "operator.token", "enrol.token"]
                .iter()
                .map(|f| {
                    let p = data_dir.join(f);
                    let bytes = std::fs::read(&p).unwrap();
                    (p, bytes)
                })
                .collect(),
        )
    }

    fn assert_unchanged(&self, what: &str) {
        for (p, bytes) in &self.0 {
            let now = std::fs::read(p).unwrap_or_else(|e| panic!("{what}: {}: {e}", p.display()));
            assert!(now == *bytes, "{what}: {} was changed", p.display());
        }
    }
}

/// Runs the server on the damaged data dir and expects a refusal within 30 s.
fn assert_refused(dir: &Path, data_dir: &Path, what: &str) -> String {
    let addr_file = dir.join("addr-again");
    let log = dir.join("again.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = command(&server_args(data_dir, &addr_file))
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut guard = Guard {
        child: Some(child),
        what: "server".into(),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = guard.child.as_mut().unwrap().try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the server started on a damaged store: {}",
            guard.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = guard.log_text();
    assert_eq!(status.code(), Some(2), "{what}: {status}: {text}");
    assert!(!addr_file.exists(), "{what}: the server listened");
    let db = data_dir.join("bellwether.db").display().to_string();
    assert!(
        text.contains(&db),
        "{what}: the error does not name {db}: {text}"
    );
    assert!(text.contains("damaged"), "{what}: {text}");
    text
}

fn overwrite(path: &Path, offset: u64, len: usize) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    // Not zeros: bytes no valid page or header holds.
    let garbage: Vec<u8> = (0..len).map(|i| (i * 131 % 251) as u8 ^ 0x5a).collect();
    f.write_all(&garbage).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn a_zero_length_store_is_refused_and_the_token_files_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = first_start(tmp.path());
    let db = data_dir.join("bellwether.db");
    std::fs::File::create(&db).unwrap().set_len(0).unwrap();
    let before = Snapshot::take(&data_dir);
    let text = assert_refused(tmp.path(), &data_dir, "zero-length store");
    assert!(text.contains("empty (0 bytes)"), "{text}");
    before.assert_unchanged("zero-length store");
}

#[test]
fn a_store_with_an_overwritten_header_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = first_start(tmp.path());
    overwrite(&data_dir.join("bellwether.db"), 0, 100);
    let before = Snapshot::take(&data_dir);
    let text = assert_refused(tmp.path(), &data_dir, "overwritten header");
    assert!(text.contains("SQLite header"), "{text}");
    before.assert_unchanged("overwritten header");
}

#[test]
fn a_store_with_garbage_pages_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = first_start(tmp.path());
    let db = data_dir.join("bellwether.db");
    let len = std::fs::metadata(&db).unwrap().len();
    let page = 4096;
    assert!(len >= 4 * page, "the store has only {len} bytes");
    // Pages 2 and after (the header page stays intact): table and index b-trees.
    overwrite(&db, page, (len - page) as usize);
    let before = Snapshot::take(&data_dir);
    let text = assert_refused(tmp.path(), &data_dir, "garbage pages");
    assert!(
        text.contains("quick_check") || text.contains("malformed"),
        "{text}"
    );
    before.assert_unchanged("garbage pages");
}

/// A store that is gone (moved, deleted) beside existing token files: the server starts on a
/// new store, but takes the tokens from their files instead of overwriting them, so the agents
/// and people who hold them keep working.
#[test]
fn a_missing_store_beside_token_files_keeps_the_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = first_start(tmp.path());
    let tokens: Vec<(PathBuf, Vec<u8>)> = ["operator.token", "enrol.token", "admin.token"]
        .iter()
        .map(|f| {
            let p = data_dir.join(f);
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    for f in ["bellwether.db", "bellwether.db-wal", "bellwether.db-shm"] {
        let _ = std::fs::remove_file(data_dir.join(f));
    }
    let (mut guard, url) = start(tmp.path(), &data_dir, "again");
    for (p, bytes) in &tokens {
        assert!(
            std::fs::read(p).unwrap() == *bytes,
            "{} was overwritten: {}",
            p.display(),
            guard.log_text()
        );
    }
    // The kept operator token is the one the new store accepts.
    let operator = String::from_utf8(tokens[0].1.clone()).unwrap();
    let out = cli(&["hosts", "--server", &url, "--token", operator.trim()]);
    assert!(
        out.status.success(),
        "the kept operator token was refused: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        guard.log_text().contains("taken from its existing file"),
        "{}",
        guard.log_text()
    );
    let status = guard.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status}: {}", guard.log_text());
}

/// Starts the server on `data_dir` and waits until it listens: the guard and its address.
fn start(dir: &Path, data_dir: &Path, name: &str) -> (Guard, String) {
    let addr_file = dir.join(format!("{name}.addr"));
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let child = command(&server_args(data_dir, &addr_file))
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut guard = Guard {
        child: Some(child),
        what: format!("server ({name})"),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file) {
            if !a.trim().is_empty() {
                return (guard, format!("http://{}", a.trim()));
            }
        }
        guard.assert_running();
        assert!(
            Instant::now() < deadline,
            "the server did not start: {}",
            guard.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn cli(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    command(&args).output().unwrap()
}

fn token_file(data_dir: &Path, kind: &str) -> String {
    std::fs::read_to_string(data_dir.join(format!("{kind}.token")))
        .unwrap()
        .trim()
        .to_string()
}

/// A revoked bootstrap token never comes back from its old file: a used store without an
/// operator token gets a new one at the next start, written over the file, and the old token
/// stays refused.
#[test]
fn a_revoked_operator_token_is_not_taken_back_from_its_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = first_start(tmp.path());
    let (mut guard, url) = start(tmp.path(), &data_dir, "second");
    let admin = token_file(&data_dir, "admin");
    let old = token_file(&data_dir, "operator");
    let out = cli(&[
        "token", "list", "--output", "json", "--server", &url, "--token", &admin,
    ]);
    assert!(out.status.success(), "{out:?}");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["role"] == "operator" && t["bootstrap"] == true)
        .unwrap_or_else(|| panic!("no bootstrap operator token in {list}"))["id"]
        .to_string();
    let out = cli(&["token", "revoke", &id, "--server", &url, "--token", &admin]);
    assert!(out.status.success(), "{out:?}");
    let status = guard.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status}: {}", guard.log_text());

    let (mut guard, url) = start(tmp.path(), &data_dir, "third");
    let new = token_file(&data_dir, "operator");
    assert_ne!(
        new,
        old,
        "the revoked token came back: {}",
        guard.log_text()
    );
    let refused = cli(&["hosts", "--server", &url, "--token", &old]);
    assert!(
        !refused.status.success(),
        "the revoked operator token still works: {refused:?}"
    );
    let accepted = cli(&["hosts", "--server", &url, "--token", &new]);
    assert!(accepted.status.success(), "{accepted:?}");
    let status = guard.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status}: {}", guard.log_text());
}
