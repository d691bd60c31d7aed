//! `--config FILE` for `bellwether server` and `bellwether agent` (a TOML file of flags), the
//! proxy's TOML configuration, the example files under packaging/etc/bellwether and the
//! systemd units under packaging/systemd, all through the real binary.

mod support;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use support::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn example(name: &str) -> PathBuf {
    root().join("packaging/etc/bellwether").join(name)
}

/// The binary with `args`, no BELLWETHER_* variable from the test's own environment, and
/// `env` set.
fn bw(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(EXE);
    cmd.args(args).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("BELLWETHER_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// The line of `--print-config` output for `key`.
fn setting<'a>(printed: &'a str, key: &str) -> &'a str {
    printed
        .lines()
        .find(|l| l.starts_with(&format!("{key} = ")) || *l == format!("# {key} (not set)"))
        .unwrap_or_else(|| panic!("no line for {key} in:\n{printed}"))
}

#[test]
fn server_reads_a_good_file_and_starts_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let f = write(
        tmp.path(),
        "server.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\ngrace = \"3s\"\nbody_limit = 1000\n\
             insecure_listen = false\nproxy_token_file = [\"pg=/etc/pg.token\"]\nlog = \"info\"\n",
            data.display().to_string()
        ),
    );
    let out = bw(&["server", "--config", &f, "--print-config"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let printed = stdout(&out);
    assert_eq!(
        setting(&printed, "grace"),
        format!("grace = \"3s\"  # file {f}:3")
    );
    assert_eq!(
        setting(&printed, "body_limit"),
        format!("body_limit = \"1000\"  # file {f}:4")
    );
    assert_eq!(
        setting(&printed, "proxy_token_file"),
        format!("proxy_token_file = [\"pg=/etc/pg.token\"]  # file {f}:6")
    );
    assert_eq!(
        setting(&printed, "log"),
        format!("log = \"info\"  # file {f}:7")
    );
    assert_eq!(
        setting(&printed, "sample_retention"),
        "sample_retention = \"7d\"  # default"
    );
    assert_eq!(setting(&printed, "database"), "# database (not set)");

    // And the server runs on it: the address it prints is the file's loopback with a free port.
    let mut child = Command::new(EXE)
        .args(["server", "--config", &f])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        first.starts_with("listening on http://127.0.0.1:"),
        "{first}"
    );
    assert!(
        data.join("operator.token").exists(),
        "the file's data_dir is used"
    );
}

#[test]
fn server_refuses_an_unknown_key_naming_file_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write(
        tmp.path(),
        "s.toml",
        "listen = \"127.0.0.1:0\"\n\ngrase = \"3s\"\n",
    );
    let out = bw(&["server", "--config", &f], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{f}:3: unknown key `grase`")) && err.contains("grace"),
        "{err}"
    );
    // A flag's spelling with dashes gets a hint.
    let f = write(tmp.path(), "k.toml", "data-dir = \"/tmp/x\"\n");
    let err = stderr(&bw(&["server", "--config", &f], &[]));
    assert!(
        err.contains(&format!("{f}:1: unknown key `data-dir`")) && err.contains("data_dir"),
        "{err}"
    );
    // A table is not a flag.
    let f = write(tmp.path(), "t.toml", "[server]\nlisten = \"x\"\n");
    let err = stderr(&bw(&["server", "--config", &f], &[]));
    assert!(
        err.contains(&format!("{f}:1: unknown key `server`")),
        "{err}"
    );
    // Not TOML at all: toml's own line and column.
    let f = write(tmp.path(), "n.toml", "listen = \n");
    let out = bw(&["server", "--config", &f], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!("{f}: TOML parse error at line 1")),
        "{}",
        stderr(&out)
    );
    // A missing file.
    let out = bw(&["server", "--config", "/nonexistent/bw.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot read --config /nonexistent/bw.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn server_refuses_a_bad_value_naming_file_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    for (text, line, key, why) in [
        (
            "listen = \"127.0.0.1:0\"\ngrace = \"soon\"\n",
            2,
            "grace",
            "soon",
        ),
        ("body_limit = \"lots\"\n", 1, "body_limit", "lots"),
        ("body_limit = -1\n", 1, "body_limit", "-1"),
        (
            "insecure_listen = \"yes\"\n",
            1,
            "insecure_listen",
            "expected true or false",
        ),
        (
            "listen = [\"a\", \"b\"]\n",
            1,
            "listen",
            "takes one value, not a list",
        ),
        (
            "proxy_token_file = [\"no-equals\"]\n",
            1,
            "proxy_token_file",
            "NAME=FILE",
        ),
    ] {
        let f = write(tmp.path(), "bad.toml", text);
        let out = bw(&["server", "--config", &f, "--print-config"], &[]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("{f}:{line}: {key}: ")) && err.contains(why),
            "{text}: {err}"
        );
    }
}

#[test]
fn server_precedence_is_flag_then_env_then_file_then_default() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write(
        tmp.path(),
        "p.toml",
        "grace = \"3s\"\ndata_dir = \"/from/file\"\nmetric_window = \"30s\"\noperator_token = \"file-token\"\n",
    );
    let out = bw(
        &["server", "--grace", "4s", "--config", &f, "--print-config"],
        &[
            ("BELLWETHER_DATA_DIR", "/from/env"),
            ("BELLWETHER_OPERATOR_TOKEN", "env-token"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let printed = stdout(&out);
    assert_eq!(setting(&printed, "grace"), "grace = \"4s\"  # flag");
    assert_eq!(
        setting(&printed, "data_dir"),
        "data_dir = \"/from/env\"  # env BELLWETHER_DATA_DIR"
    );
    assert_eq!(
        setting(&printed, "metric_window"),
        format!("metric_window = \"30s\"  # file {f}:3")
    );
    assert_eq!(
        setting(&printed, "sample_max_ahead"),
        "sample_max_ahead = \"5m\"  # default"
    );
    // Secrets are never printed, wherever they came from.
    assert_eq!(
        setting(&printed, "operator_token"),
        "operator_token = \"(hidden)\"  # env BELLWETHER_OPERATOR_TOKEN"
    );
    assert!(!printed.contains("env-token") && !printed.contains("file-token"));
}

#[test]
fn agent_reads_a_good_file() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write(
        tmp.path(),
        "agent.toml",
        "server = [\"http://10.0.0.1:7878\", \"http://10.0.0.2:7878\"]\ntoken_file = \"/etc/bellwether/enrol.token\"\n\
         label = [\"role=web\", \"zone=a\"]\nlearn_graph = false\ninterval = \"2s\"\nstate_dir = \"/var/lib/bw\"\n\
         protect = [\"etc/websvc.conf\"]\n",
    );
    let out = bw(&["agent", "--config", &f, "--print-config"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let printed = stdout(&out);
    assert_eq!(
        setting(&printed, "server"),
        format!("server = [\"http://10.0.0.1:7878\", \"http://10.0.0.2:7878\"]  # file {f}:1")
    );
    assert_eq!(
        setting(&printed, "label"),
        format!("label = [\"role=web\", \"zone=a\"]  # file {f}:3")
    );
    assert_eq!(
        setting(&printed, "learn_graph"),
        format!("learn_graph = \"false\"  # file {f}:4")
    );
    assert_eq!(setting(&printed, "buffer"), "buffer = \"10000\"  # default");
}

#[test]
fn agent_refuses_a_bad_key_and_a_bad_value() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write(
        tmp.path(),
        "a.toml",
        "token = \"t\"\nlabels = [\"role=web\"]\n",
    );
    let out = bw(&["agent", "--config", &f], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{f}:2: unknown key `labels`")) && err.contains("label,"),
        "{err}"
    );

    let f = write(tmp.path(), "v.toml", "token = \"t\"\ninterval = \"fast\"\n");
    let out = bw(&["agent", "--config", &f], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!("{f}:2: interval: ")),
        "{}",
        stderr(&out)
    );

    let f = write(
        tmp.path(),
        "b.toml",
        "token = \"t\"\nlearn_graph = \"maybe\"\n",
    );
    let out = bw(&["agent", "--config", &f], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!("{f}:2: learn_graph: ")),
        "{}",
        stderr(&out)
    );

    // The flags' own rules hold for keys: protect needs state_dir, and the error says which
    // settings came from the file.
    let f = write(
        tmp.path(),
        "r.toml",
        "token = \"t\"\nprotect = [\"etc/a\"]\n",
    );
    let out = bw(&["agent", "--config", &f], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("--state-dir")
            && err.contains(&format!(
                "with these settings from {f}: protect (line 2), token (line 1)"
            )),
        "{err}"
    );
}

#[test]
fn agent_precedence_is_flag_then_env_then_file_then_default() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write(
        tmp.path(),
        "p.toml",
        "server = [\"http://file:7878\"]\ninterval = \"2s\"\nbuffer = 5\ntoken = \"file-token\"\n",
    );
    let out = bw(
        &[
            "agent",
            "--config",
            &f,
            "--interval",
            "3s",
            "--token-file",
            "/flag/token",
            "--print-config",
        ],
        &[("BELLWETHER_SERVER", "http://env:7878")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let printed = stdout(&out);
    assert_eq!(setting(&printed, "interval"), "interval = \"3s\"  # flag");
    assert_eq!(
        setting(&printed, "server"),
        "server = [\"http://env:7878\"]  # env BELLWETHER_SERVER"
    );
    assert_eq!(
        setting(&printed, "buffer"),
        format!("buffer = \"5\"  # file {f}:3")
    );
    assert_eq!(
        setting(&printed, "max_backoff"),
        "max_backoff = \"30s\"  # default"
    );
    // --token-file on the command line wins over the file's token, which conflicts with it.
    assert_eq!(
        setting(&printed, "token_file"),
        "token_file = \"/flag/token\"  # flag"
    );
    assert_eq!(setting(&printed, "token"), "# token (not set)");
}

/// Every key `--print-config` lists (one per flag, from the real command) is in the example
/// file, set or commented out; and the example loads through the real parser.
#[test]
fn every_flag_of_server_and_agent_has_a_key_in_the_example_file() {
    for (sub, extra) in [("server", vec![]), ("agent", vec!["--token", "t"])] {
        let mut args = vec![sub, "--print-config"];
        args.extend(&extra);
        let out = bw(&args, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let keys: Vec<String> = stdout(&out)
            .lines()
            .filter(|l| !l.starts_with("# bellwether"))
            .map(|l| {
                l.trim_start_matches("# ")
                    .split([' ', '='])
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert!(keys.len() > 10, "{keys:?}");
        let path = example(&format!("{sub}.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        let documented = |k: &str| {
            text.lines().any(|l| {
                let l = l.trim_start_matches('#').trim_start();
                l.starts_with(&format!("{k} =")) || l.starts_with(&format!("{k}="))
            })
        };
        let missing: Vec<&String> = keys.iter().filter(|k| !documented(k)).collect();
        assert!(
            missing.is_empty(),
            "{} lacks the keys {missing:?} (flags of `bellwether {sub}`): add each, set or \
             commented out, with a line saying what it does",
            path.display()
        );
        let p = path.display().to_string();
        let out = bw(&[sub, "--config", &p, "--print-config"], &[]);
        assert_eq!(out.status.code(), Some(0), "{p}: {}", stderr(&out));
        assert!(
            stdout(&out).contains(&format!("# file {p}:")),
            "{}",
            stdout(&out)
        );
    }
}

/// The proxy's flags each name the key that stands for them in proxy.toml's header.
#[test]
fn every_flag_of_proxy_is_mapped_in_the_example_file() {
    let out = bw(&["proxy", "--help"], &[]);
    let help = stdout(&out);
    let text = std::fs::read_to_string(example("proxy.toml")).unwrap();
    let mut flags: Vec<&str> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches([',', '.', ')', ';']))
        .filter(|w| {
            w.chars()
                .skip(2)
                .all(|c| c.is_ascii_lowercase() || c == '-')
        })
        .collect();
    flags.sort();
    flags.dedup();
    assert!(flags.contains(&"--admin-token-file"), "{flags:?}");
    for flag in flags {
        if ["--help", "--version", "--config", "--log"].contains(&flag) {
            continue;
        }
        assert!(
            text.lines().any(|l| l.starts_with(&format!("#   {flag} "))),
            "packaging/etc/bellwether/proxy.toml does not say which key stands for {flag}"
        );
    }
}

#[test]
fn proxy_reads_toml_and_names_a_bad_key_or_value() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write(
        tmp.path(),
        "p.toml",
        "admin = \"127.0.0.1:0\"\nadmin_tok = \"x\"\n[[listeners]]\naddress = \"127.0.0.1:0\"\n[[backends]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n",
    );
    let out = bw(&["proxy", "--config", &f], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&f) && err.contains("line 2") && err.contains("admin_tok"),
        "{err}"
    );

    let f = write(
        tmp.path(),
        "v.toml",
        "[[listeners]]\naddress = \"127.0.0.1:0\"\nprotocol = \"http\"\n[[backends]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n",
    );
    let out = bw(&["proxy", "--config", &f], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&f) && err.contains("line 3") && err.contains("http"),
        "{err}"
    );
}

/// A good TOML file runs, and the flags win over it: --admin moves the admin API the file
/// put elsewhere, --workers overrides the file's.
#[test]
fn proxy_runs_from_toml_with_flags_winning() {
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("admin.token");
    let f = write(
        tmp.path(),
        "p.toml",
        &format!(
            "admin = \"127.0.0.1:1\"\nadmin_token_file = {:?}\nworkers = 3\n[[listeners]]\naddress = \"127.0.0.1:0\"\n\
             [[backends]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n",
            token.display().to_string()
        ),
    );
    let mut child = Command::new(EXE)
        .args([
            "proxy",
            "--config",
            &f,
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut got = Vec::new();
    for l in lines.by_ref() {
        let l = l.unwrap();
        let done = l.ends_with("worker threads");
        got.push(l);
        if done {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let text = got.join("\n");
    assert!(text.contains("listening on 127.0.0.1:"), "{text}");
    assert!(
        text.contains("admin api on http://127.0.0.1:") && !text.contains("127.0.0.1:1\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("admin token in {}", token.display())),
        "{text}"
    );
    assert!(text.ends_with("1 worker threads"), "{text}");
}

/// Each unit passes `systemd-analyze verify` (with ExecStart pointed at the built binary), and
/// its ExecStart's command line parses with the example configuration it names.
#[test]
fn systemd_units_verify_and_their_command_lines_parse() {
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        analyze.is_ok_and(|o| o.status.success()),
        "systemd-analyze is needed to check packaging/systemd: install it: apt-get install -y systemd"
    );
    let tmp = tempfile::tempdir().unwrap();
    for (unit, sub) in [
        ("bellwether-server.service", "server"),
        ("bellwether-agent.service", "agent"),
        ("bellwether-proxy.service", "proxy"),
    ] {
        let text = std::fs::read_to_string(root().join("packaging/systemd").join(unit)).unwrap();
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{unit} has no ExecStart"));
        let argv: Vec<&str> = exec.split_whitespace().collect();
        assert_eq!(
            &argv[..2],
            &["/usr/local/bin/bellwether", sub],
            "{unit}: {exec}"
        );
        // The config it names is the example of that name, read through the real parser.
        let (i, conf) = argv
            .iter()
            .enumerate()
            .find(|(_, a)| a.starts_with("/etc/bellwether/"))
            .unwrap_or_else(|| panic!("{unit}: ExecStart names no /etc/bellwether file"));
        assert_eq!(argv[i - 1], "--config", "{unit}");
        let local = example(conf.trim_start_matches("/etc/bellwether/"));
        let mut args: Vec<String> = argv[1..].iter().map(|s| s.to_string()).collect();
        args[i - 1] = local.display().to_string();
        let out = if sub == "proxy" {
            // The proxy has no --print-config: its help shows the flags exist, its unit test
            // loads the file (cmd::proxy).
            let help = stdout(&bw(&["proxy", "--help"], &[]));
            for a in &args {
                if a.starts_with("--") {
                    assert!(
                        help.contains(a.as_str()),
                        "{unit}: {a} is not a flag of proxy"
                    );
                }
            }
            None
        } else {
            let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
            a.push("--print-config");
            Some(bw(&a, &[]))
        };
        if let Some(out) = out {
            assert_eq!(out.status.code(), Some(0), "{unit}: {}", stderr(&out));
        }
        // systemd's own check, on a copy whose ExecStart is the built binary.
        let copy = tmp.path().join(unit);
        std::fs::write(&copy, text.replace("/usr/local/bin/bellwether", EXE)).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&copy)
            .output()
            .unwrap();
        let said = format!("{}{}", stdout(&out), stderr(&out));
        assert!(
            out.status.success() && !said.contains(unit),
            "systemd-analyze verify {unit}:\n{said}"
        );
    }
}
