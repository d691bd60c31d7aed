//! The agent never reads or writes outside its --rootfs, and runs only what its
//! --allow-action list allows: real `bellwether agent` processes against a real
//! `bellwether server`, the actions sent by real rollouts, the results read back from the
//! rollout's events. Each host root is planted with symbolic links that lead out of it, to a
//! directory next to it whose files must stay untouched.

mod support;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;

const OP: &str = "operator-token-agent-paths";
const ENROL: &str = "enrol-token-agent-paths";
const WAIT: Duration = Duration::from_secs(60);

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `bellwether ARGS…`, which must exit on its own: an agent that should refuse to start
/// but starts is killed after a while and fails the test.
fn run_bounded(args: &[&str]) -> std::process::Output {
    let mut child = std::process::Command::new(EXE)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "bellwether {args:?} was still running after 20s (it should have refused to start):\n{}",
                text(&o)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// A server with a trained model (a rollout needs one), and the directory outside every host
/// root.
struct Fleet {
    tmp: tempfile::TempDir,
    server: Server,
    outside: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Fleet {
    fn start() -> Fleet {
        let tmp = tempfile::tempdir().unwrap();
        let server = Server::start(tmp.path(), &Backend::Sqlite, "127.0.0.1:0", OP, ENROL);
        let mut csv = String::from("deployment_id,host,disk_free_pct,outcome\n");
        for i in 0..300 {
            let disk = (i * 7 % 60) as f64;
            let failed = if disk < 10.0 {
                i % 10 != 0
            } else {
                i % 17 == 0
            };
            writeln!(csv, "d{},h{i},{disk},{}", i / 10, failed as u8).unwrap();
        }
        let h = tmp.path().join("history.csv");
        std::fs::write(&h, csv).unwrap();
        let url = server.url.clone();
        let o = run(&[
            "model",
            "import",
            "--server",
            &url,
            "--token",
            OP,
            "--history",
            h.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let o = run(&["model", "train", "--server", &url, "--token", OP]);
        assert!(o.status.success(), "{}", text(&o));
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("version"), "outside\n").unwrap();
        std::fs::write(outside.join("websvc.conf"), "outside = true\n").unwrap();
        std::fs::write(outside.join("secret.conf"), "password = hunter2\n").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Fleet {
            tmp,
            server,
            outside,
            rt,
        }
    }

    /// A host root with a version file and a service configuration.
    fn root(&self, name: &str) -> PathBuf {
        let root = self.tmp.path().join(name);
        std::fs::create_dir_all(root.join("etc/websvc")).unwrap();
        std::fs::write(root.join("etc/hostname"), format!("{name}\n")).unwrap();
        std::fs::write(root.join("etc/websvc/version"), "1\n").unwrap();
        std::fs::write(root.join("etc/websvc.conf"), "workers = 4\n").unwrap();
        root
    }

    /// Starts an agent that runs actions (its own state dir), in a role of its own so that a
    /// rollout targets it alone.
    fn agent(&self, name: &str, root: &Path, extra: &[&str]) -> Guard {
        let state = self.tmp.path().join(format!("{name}-state"));
        let role = format!("role={name}");
        let mut args = vec![
            "--state-dir",
            state.to_str().unwrap(),
            "--action-wait",
            "500ms",
            "--label",
            &role,
        ];
        args.extend_from_slice(extra);
        let mut agent = start_agent(self.tmp.path(), &self.server, name, root, "200ms", &args);
        let api = self.server.api();
        self.rt.block_on(eventually(
            &format!("{name}'s first profile"),
            WAIT,
            || async { api.profile(name).await },
        ));
        agent.assert_running();
        agent
    }

    /// Starts a rollout of `apply` (and `revert`) on the host `name`; returns its id.
    fn rollout(&self, name: &str, apply: &str, revert: &str) -> String {
        let plan = format!(
            r#"name: paths-{name}
update:
  name: websvc
  version: "2"
  apply: {apply}
  revert: {revert}
targets:
  labels: {{ role: {name} }}
risk:
  low: 0.98
  high: 0.99
  pilot: {{ min: 1, max: 1 }}
  high_risk: include_last
waves: {{ fixed: [100] }}
bake: 1s
analysis:
  interval: 100ms
  baseline: 200ms
  metrics:
    - {{ name: svc_error_ratio, threshold_pct: 50, for: 300ms, floor: 0.01 }}
  judge: {{ enabled: false }}
no_data: {{ after: 30s }}
"#
        );
        let file = self.tmp.path().join(format!("plan-{name}.yaml"));
        std::fs::write(&file, plan).unwrap();
        let o = run(&[
            "rollout",
            "--server",
            &self.server.url,
            "--token",
            OP,
            "start",
            file.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        let id = out.split_whitespace().nth(2).unwrap().to_string();
        assert!(id.starts_with("r-"), "{out}");
        id
    }

    /// Waits for an event of `kind` in the rollout's report; returns its reason.
    fn event(&self, id: &str, kind: &str) -> String {
        let api = self.server.api();
        self.rt.block_on(eventually(
            &format!("a {kind} event in rollout {id}"),
            WAIT,
            || async {
                let (status, report) = api.get(&format!("/api/v1/rollouts/{id}/report")).await;
                if status != 200 {
                    return None;
                }
                report["events"].as_array()?.iter().find_map(|e| {
                    (e["kind"] == kind).then(|| e["reason"].as_str().unwrap_or("").to_owned())
                })
            },
        ))
    }

    fn assert_outside_untouched(&self) {
        for (file, text) in [
            ("version", "outside\n"),
            ("websvc.conf", "outside = true\n"),
            ("secret.conf", "password = hunter2\n"),
        ] {
            assert_eq!(
                std::fs::read_to_string(self.outside.join(file)).unwrap(),
                text,
                "{file} outside the root was changed"
            );
        }
        assert_eq!(
            std::fs::read_dir(&self.outside).unwrap().count(),
            3,
            "a file was created outside the root"
        );
    }
}

#[test]
fn set_service_version_does_not_write_through_a_directory_linked_outside() {
    let fleet = Fleet::start();
    // etc/websvc is a link to a directory outside: set_service_version must not write the
    //    new version there; the apply fails with the path in its reason.
    let root = fleet.root("linked-dir");
    std::fs::remove_dir_all(root.join("etc/websvc")).unwrap();
    std::os::unix::fs::symlink(&fleet.outside, root.join("etc/websvc")).unwrap();
    let _a1 = fleet.agent("linked-dir", &root, &[]);
    let id = fleet.rollout(
        "linked-dir",
        r#"{ builtin: set_service_version, version: "2" }"#,
        r#"{ builtin: set_service_version, version: "1" }"#,
    );
    let reason = fleet.event(&id, "host.failed");
    assert!(
        reason.contains("could not write etc/websvc/version in the rootfs")
            && reason.contains("etc/websvc is a symbolic link to"),
        "{reason}"
    );
    fleet.assert_outside_untouched();
}

#[test]
fn restore_file_does_not_follow_a_link_planted_at_a_temporary_name() {
    let fleet = Fleet::start();
    // A link planted at the temporary name restore_file used to write through.
    let root = fleet.root("planted");
    let _a2 = fleet.agent("planted", &root, &["--protect", "etc/websvc.conf"]);
    std::fs::write(root.join("etc/websvc.conf"), "workers = 0\n").unwrap();
    std::os::unix::fs::symlink(
        fleet.outside.join("websvc.conf"),
        root.join("etc/.websvc.conf.bellwether-tmp"),
    )
    .unwrap();
    let id = fleet.rollout(
        "planted",
        r#"{ builtin: restore_file, path: etc/websvc.conf }"#,
        r#"{ builtin: set_service_version, version: "1" }"#,
    );
    let reason = fleet.event(&id, "host.applied");
    assert!(reason.starts_with("Applied"), "{reason}");
    assert_eq!(
        std::fs::read_to_string(root.join("etc/websvc.conf")).unwrap(),
        "workers = 4\n",
        "the snapshot is back in the root"
    );
    fleet.assert_outside_untouched();
}

#[test]
fn a_protected_file_under_a_directory_linked_outside_is_neither_snapshotted_nor_restored() {
    let fleet = Fleet::start();
    // A protected file under a directory linked outside. At start the agent refuses to
    //    snapshot it (it is not in the root) and says why …
    let root = fleet.root("protected");
    std::fs::create_dir_all(root.join("etc/app")).unwrap();
    std::fs::write(root.join("etc/app/websvc.conf"), "workers = 4\n").unwrap();
    std::fs::rename(root.join("etc/app"), root.join("etc/app.real")).unwrap();
    std::os::unix::fs::symlink(&fleet.outside, root.join("etc/app")).unwrap();
    let o = run_bounded(&[
        "agent",
        "--server",
        &fleet.server.url,
        "--token",
        ENROL,
        "--rootfs",
        root.to_str().unwrap(),
        "--state-dir",
        fleet.tmp.path().join("refused-state").to_str().unwrap(),
        "--protect",
        "etc/app/websvc.conf",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("--protect etc/app/websvc.conf: ")
            && text(&o).contains("etc/app is a symbolic link to"),
        "{}",
        text(&o)
    );
    // … and with the snapshot taken while etc/app was a directory, a link put there later
    // does not make restore_file write outside.
    std::fs::remove_file(root.join("etc/app")).unwrap();
    std::fs::rename(root.join("etc/app.real"), root.join("etc/app")).unwrap();
    let _a3 = fleet.agent("protected", &root, &["--protect", "etc/app/websvc.conf"]);
    std::fs::rename(root.join("etc/app"), root.join("etc/app.real")).unwrap();
    std::os::unix::fs::symlink(&fleet.outside, root.join("etc/app")).unwrap();
    let id = fleet.rollout(
        "protected",
        r#"{ builtin: restore_file, path: etc/app/websvc.conf }"#,
        r#"{ builtin: set_service_version, version: "1" }"#,
    );
    let reason = fleet.event(&id, "host.failed");
    assert!(
        reason.contains("could not write etc/app/websvc.conf in the rootfs")
            && reason.contains("etc/app is a symbolic link to"),
        "{reason}"
    );
    fleet.assert_outside_untouched();
}

#[test]
fn a_watched_file_linked_outside_sends_no_hash_or_size() {
    let fleet = Fleet::start();
    // A watched file linked to a file outside: its hash and size are not sent.
    let root = fleet.root("watched");
    std::os::unix::fs::symlink(fleet.outside.join("secret.conf"), root.join("etc/app.conf"))
        .unwrap();
    std::fs::create_dir_all(root.join("etc/bellwether")).unwrap();
    std::os::unix::fs::symlink(
        fleet.outside.join("secret.conf"),
        root.join("etc/bellwether/watch-files"),
    )
    .unwrap();
    let _a4 = fleet.agent("watched", &root, &["--watch-file", "etc/app.conf"]);
    let api = fleet.server.api();
    let profile = fleet
        .rt
        .block_on(api.profile("watched"))
        .expect("a profile");
    let watched = profile
        .files
        .get("etc/app.conf")
        .expect("etc/app.conf watched");
    assert_eq!(watched.sha256, None, "{profile:?}");
    assert_eq!(watched.size, None, "{profile:?}");
    let secret_sha = bellwether_drift::root::sha256_hex(b"password = hunter2\n");
    let json = serde_json::to_string(&profile).unwrap();
    assert!(
        !json.contains(&secret_sha) && !json.contains("hunter2"),
        "{json}"
    );
    assert!(
        profile.notes.iter().any(|n| n
            .starts_with("Watched file etc/app.conf is recorded as absent")
            && n.contains("is a symbolic link to")),
        "{:?}",
        profile.notes
    );
    fleet.assert_outside_untouched();
}

#[test]
fn an_action_outside_the_allow_list_is_reported_failed_with_the_reason() {
    let fleet = Fleet::start();
    // The allow-list: an argv outside it is refused and reported failed with the reason;
    //    the built-in it allows (the revert) runs.
    let root = fleet.root("allow");
    let marker = fleet.tmp.path().join("allow-ran");
    let _a5 = fleet.agent(
        "allow",
        &root,
        &[
            "--allow-action",
            "set_service_version",
            "--allow-action",
            "exec:/bin/true",
        ],
    );
    let id = fleet.rollout(
        "allow",
        &format!(r#"{{ argv: ["touch", "{}"] }}"#, marker.display()),
        r#"{ builtin: set_service_version, version: "0" }"#,
    );
    let reason = fleet.event(&id, "host.failed");
    assert!(
        reason.contains("refused by this agent's --allow-action list: argv [\"touch\"")
            && reason.contains("matches none of set_service_version, exec:/bin/true"),
        "{reason}"
    );
    assert!(!marker.exists(), "the refused argv ran");
    let reason = fleet.event(&id, "host.rolled_back");
    assert!(reason.starts_with("Reverted"), "{reason}");
    assert_eq!(
        std::fs::read_to_string(root.join("etc/websvc/version")).unwrap(),
        "0\n",
        "the allowed revert ran"
    );
}

#[test]
fn allow_action_values_are_checked_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run_bounded(&[
        "agent",
        "--token",
        ENROL,
        "--name",
        "x",
        "--rootfs",
        tmp.path().to_str().unwrap(),
        "--state-dir",
        tmp.path().join("state").to_str().unwrap(),
        "--allow-action",
        "exec:/usr/bin/systemctl,,restart",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o)
            .contains("--allow-action \"exec:/usr/bin/systemctl,,restart\": argument 1 is empty"),
        "{}",
        text(&o)
    );
}
