//! A real full disk under a real server: the SQLite data dir is a small tmpfs, filled to the
//! last byte. A write the store cannot commit is a 503 with `Retry-After`, never a 2xx, and
//! once space is freed the same server (no restart) stores the next write.
//!
//! These tests mount a tmpfs, so they need root (or CAP_SYS_ADMIN); without it they fail
//! with a message saying so.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use bellwether_model::HostName;
use bellwether_server::{Server, ServerConfig};
use bellwether_store::{Store, StoreConfig};
use serde_json::{json, Value};

const OP: &str = "operator-token-for-full-disk-01";
const ENROL: &str = "enrol-token-for-full-disk-0001";

/// A tmpfs of a fixed size mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = std::env::temp_dir().join(bellwether_store::testing::unique_name("bw-full-disk"));
        std::fs::create_dir_all(&dir).expect("create the mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(&dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run mount(8) ({e}); this test mounts a tmpfs as a full disk and needs root or CAP_SYS_ADMIN")
            });
        if !out.status.success() {
            let _ = std::fs::remove_dir(&dir);
            panic!(
                "`mount -t tmpfs` failed ({}): {}; this test mounts a small tmpfs as the data dir to fill it, \
                 and needs root or CAP_SYS_ADMIN",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a connection not yet closed after a panic): detach it.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Fills the file system holding `dir` until a write fails with ENOSPC; returns the filler.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("create the filler file");
    for chunk in [64 * 1024, 4096, 512, 1] {
        let buf = vec![0xa5u8; chunk];
        loop {
            match f.write_all(&buf) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    let _ = f.sync_all();
    path
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A sample batch of `n` samples with distinct names, so no page of an earlier batch can
/// hold them.
fn batch(tag: &str, n: usize) -> Value {
    let ts = now_ms();
    let samples: Vec<Value> = (0..n)
        .map(|i| json!({"ts_ms": ts + i as i64, "name": format!("{tag}_metric_{i:05}"), "value": i as f64}))
        .collect();
    json!({"samples": samples, "dropped": 0})
}

struct Running {
    base: String,
    http: reqwest::Client,
    store: Store,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), bellwether_server::ServerError>>,
}

async fn start(dir: &Path) -> Running {
    let mut config = ServerConfig::new(StoreConfig::sqlite_in(dir), Some(dir.to_path_buf()));
    config.operator_token = Some(OP.into());
    config.enrol_token = Some(ENROL.into());
    let server = Server::open(config).await.expect("open the server");
    let store = server.store().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(listener, async {
        let _ = rx.await;
    }));
    Running {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        store,
        stop: Some(tx),
        task,
    }
}

impl Running {
    async fn post(&self, path: &str, token: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

/// Asserts a 503 with a `Retry-After` of whole seconds and an error naming the full disk.
async fn assert_full(resp: reqwest::Response, what: &str) {
    let status = resp.status();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let text = resp.text().await.unwrap();
    assert_eq!(
        status.as_u16(),
        503,
        "{what} on a full disk: {status} {text}"
    );
    let retry = retry.unwrap_or_else(|| panic!("{what}: a 503 without Retry-After: {text}"));
    assert!(
        retry.parse::<u64>().is_ok_and(|s| s >= 1),
        "{what}: Retry-After {retry:?} is not a number of seconds"
    );
    assert!(
        text.contains("full"),
        "{what}: the error does not say the disk is full: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_503_with_retry_after_and_the_server_recovers_without_a_restart() {
    let fs = Tmpfs::mount("3m");
    let server = start(&fs.dir).await;
    let host = HostName::new("web-01").unwrap();
    let r = server
        .post("/api/v1/enrol", ENROL, &json!({"name": "web-01"}))
        .await;
    assert_eq!(r.status().as_u16(), 200);
    let agent = r.json::<Value>().await.unwrap()["agent_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = server
        .post("/api/v1/agent/samples", &agent, &batch("warm", 10))
        .await;
    assert_eq!(r.status().as_u16(), 202);
    let mut stored = 10;

    let filler = fill(&fs.dir);
    for i in 0..8 {
        let r = server
            .post(
                "/api/v1/agent/samples",
                &agent,
                &batch(&format!("full{i}"), 2000),
            )
            .await;
        assert_full(r, &format!("sample batch {i}")).await;
    }

    std::fs::remove_file(&filler).unwrap();
    let r = server
        .post("/api/v1/agent/samples", &agent, &batch("after", 2000))
        .await;
    let status = r.status();
    assert!(
        status.is_success(),
        "the first batch after space was freed: {status} {}",
        r.text().await.unwrap()
    );
    stored += 2000;
    assert_eq!(
        server.store.count_samples(&host).await.unwrap(),
        stored,
        "every acknowledged sample, and none of the refused ones, is stored"
    );
    server.stop().await;
    // Committed, not only visible to the connection that wrote it: a fresh open sees it all.
    let reopened = Store::open(&StoreConfig::sqlite_in(&fs.dir)).await.unwrap();
    assert_eq!(reopened.count_samples(&host).await.unwrap(), stored);
    reopened.close().await;
}

/// A profile of about 150 KB (many packages), so that storing it needs fresh pages.
fn big_profile(tag: &str) -> Value {
    let packages: serde_json::Map<String, Value> = (0..3000)
        .map(|i| {
            (
                format!("{tag}-package-{i:05}"),
                json!(format!("1.{i}.0-{tag}")),
            )
        })
        .collect();
    json!({"hostname": "web-01", "kernel": "6.1.0", "packages": packages, "metrics": {"load1": 0.5}})
}

/// Labels of about 60 KB.
fn big_labels(tag: &str) -> Value {
    let labels: serde_json::Map<String, Value> = (0..60)
        .map(|i| (format!("{tag}{i:02}"), json!("x".repeat(1000))))
        .collect();
    Value::Object(labels)
}

/// A deployment history CSV of `rows` rows.
fn history(tag: &str, rows: usize) -> String {
    let mut s = String::from("deployment_id,host,os,disk_free_pct,outcome\n");
    for i in 0..rows {
        s.push_str(&format!(
            "{tag}-{i},host-{i:05},debian-12,{},{}\n",
            i % 100,
            i % 7 == 0
        ));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_route_is_503_on_a_full_disk_and_works_again_once_space_is_freed() {
    let fs = Tmpfs::mount("4m");
    let server = start(&fs.dir).await;
    let host = HostName::new("web-01").unwrap();
    let r = server
        .post("/api/v1/enrol", ENROL, &json!({"name": "web-01"}))
        .await;
    assert_eq!(r.status().as_u16(), 200);
    let agent = r.json::<Value>().await.unwrap()["agent_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = server
        .post("/api/v1/agent/profile", &agent, &big_profile("before"))
        .await;
    assert_eq!(r.status().as_u16(), 204);
    let events_before = server.store.events(None, 10_000).await.unwrap().len();

    let filler = fill(&fs.dir);
    let enrol = json!({"name": "web-02", "labels": big_labels("full")});
    let import = |csv: String| {
        server
            .http
            .post(format!("{}/api/v1/history/import", server.base))
            .bearer_auth(OP)
            .header("content-type", "text/csv")
            .body(csv)
            .send()
    };
    assert_full(server.post("/api/v1/enrol", ENROL, &enrol).await, "enrol").await;
    assert_full(
        server
            .post("/api/v1/agent/profile", &agent, &big_profile("full"))
            .await,
        "profile",
    )
    .await;
    assert_full(
        server
            .post("/api/v1/baselines", OP, &json!({"hosts": ["web-01"]}))
            .await,
        "baseline capture",
    )
    .await;
    assert_full(
        import(history("full", 3000)).await.unwrap(),
        "history import",
    )
    .await;
    // Nothing of the refused requests is in the store.
    assert_eq!(server.store.count_hosts().await.unwrap(), 1);
    assert!(server.store.baseline(&host).await.unwrap().is_none());
    assert_eq!(server.store.outcomes_since(0).await.unwrap().0, 0);
    assert_eq!(
        server.store.events(None, 10_000).await.unwrap().len(),
        events_before,
        "a refused request logged an event"
    );

    std::fs::remove_file(&filler).unwrap();
    let r = server.post("/api/v1/enrol", ENROL, &enrol).await;
    assert_eq!(r.status().as_u16(), 200, "enrol after space was freed");
    let r = server
        .post("/api/v1/agent/profile", &agent, &big_profile("after"))
        .await;
    assert_eq!(r.status().as_u16(), 204, "profile after space was freed");
    let r = server
        .post("/api/v1/baselines", OP, &json!({"hosts": ["web-01"]}))
        .await;
    assert_eq!(r.status().as_u16(), 200, "baselines after space was freed");
    let r = import(history("after", 3000)).await.unwrap();
    assert_eq!(r.status().as_u16(), 201, "import after space was freed");
    server.stop().await;

    let reopened = Store::open(&StoreConfig::sqlite_in(&fs.dir)).await.unwrap();
    assert_eq!(reopened.count_hosts().await.unwrap(), 2);
    let baseline = reopened.baseline(&host).await.unwrap().expect("a baseline");
    assert!(baseline
        .packages
        .unwrap()
        .contains_key("after-package-00000"));
    assert_eq!(reopened.outcomes_since(0).await.unwrap().0, 3000);
    reopened.close().await;
}
