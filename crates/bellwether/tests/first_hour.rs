//! Issue 15, "the first hour": what a new user met on a fresh clone, through the built binary.
//! A reader that closes the pipe ends a report quietly; the examples of `detect --help`,
//! docs/detect.md and docs/predict.md run from the repository; the help and the reports say
//! what they mean.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use bellwether_drift::version::ChangeLevel;
use bellwether_sandbox::state::{HostEntry, Injected, Proc, State};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bellwether"))
}

fn bellwether(args: &[&str], dir: &Path) -> Output {
    bin()
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the bellwether binary runs")
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", describe(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The repository's root (tests run in the crate's directory).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `args` with its stdout a pipe whose reader goes away: after `lines_read` lines (0:
/// closed before the command writes anything, so its first write fails). Returns the exit
/// status and everything it wrote on stderr.
fn with_closed_stdout(args: &[&str], dir: &Path, lines_read: usize) -> (Option<i32>, String) {
    let mut child = bin()
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the bellwether binary runs");
    let stdout = child.stdout.take().unwrap();
    if lines_read > 0 {
        let mut r = BufReader::new(stdout);
        for _ in 0..lines_read {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(
                !line.is_empty(),
                "{args:?} wrote fewer than {lines_read} lines"
            );
        }
        // `head` has its lines and exits: the read end closes here.
    } else {
        drop(stdout);
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_quiet(what: &str, (code, stderr): (Option<i32>, String)) {
    assert_eq!(code, Some(0), "{what}: exit {code:?}, stderr:\n{stderr}");
    for bad in ["panicked", "Broken pipe", "RUST_BACKTRACE", "error"] {
        assert!(
            !stderr.contains(bad),
            "{what}: stderr mentions `{bad}`:\n{stderr}"
        );
    }
}

/// A series long enough that its scores overflow a pipe's buffer (64 KiB).
fn long_series(rows: usize) -> String {
    let mut s = String::from("timestamp,value\n");
    for i in 0..rows {
        let v = 10.0 + ((i % 24) as f64 / 24.0 * std::f64::consts::TAU).sin();
        s.push_str(&format!("{},{v}\n", 1_700_000_000 + i as i64 * 300));
    }
    s
}

/// A stopped sandbox's state (no process runs): `sandbox status` prints it from the file.
/// web-01 was built with a scenario package (before its baseline) and later got a load spike.
fn stopped_sandbox(dir: &Path, hosts: usize) -> PathBuf {
    let sbx = dir.join("sbx");
    std::fs::create_dir_all(&sbx).unwrap();
    let sbx = sbx.canonicalize().unwrap();
    let proc_ = |name: &str| Proc {
        pid: 0,
        addr: None,
        log: sbx.join(format!("logs/{name}.log")),
    };
    let hosts = (1..=hosts)
        .map(|i| {
            let name = format!("web-{i:02}");
            let mut drifts = vec![Injected::SetPackage {
                name: "libssl1.1".into(),
                version: "1.1.1n-0+deb11u5".into(),
            }];
            if i == 1 {
                drifts.push(Injected::Load {
                    load: [12.0, 3.0, 1.0],
                });
                drifts.push(Injected::Package {
                    name: "nginx".into(),
                    level: ChangeLevel::Major,
                });
            }
            HostEntry {
                role: "web".into(),
                seed: i as u64,
                packages_seed: 1,
                root: sbx.join("hosts").join(&name),
                agent: proc_(&format!("agent-{name}")),
                service: None,
                labels: Default::default(),
                drifts,
                built: 1,
                name,
            }
        })
        .collect();
    State {
        dir: sbx.clone(),
        seed: 1,
        created_at_ms: 0,
        server_url: "http://127.0.0.1:9".into(),
        ca_file: None,
        operator_token_file: sbx.join("operator.token"),
        enrol_token_file: sbx.join("enrol.token"),
        server: proc_("server"),
        listener: proc_("listener"),
        hosts,
    }
    .save()
    .unwrap();
    sbx
}

/// `detect … --output - | head`, `model evaluate … | head` and `sandbox status | head`
/// panicked with a backtrace on the closed pipe. They exit 0, saying nothing.
#[test]
fn a_closed_pipe_ends_reports_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("long.csv"), long_series(20_000)).unwrap();
    let detect = ["detect", "--input", "long.csv", "--output", "-"];
    assert_quiet("detect | head -3", with_closed_stdout(&detect, d, 3));
    assert_quiet("detect, reader gone", with_closed_stdout(&detect, d, 0));

    for (out, seed) in [("train.csv", "1"), ("test.csv", "2")] {
        let args = [
            "model", "synth", "--out", out, "--rows", "1500", "--seed", seed,
        ];
        ok(&bellwether(&args, d));
    }
    ok(&bellwether(
        &[
            "model",
            "train",
            "--history",
            "train.csv",
            "--out",
            "m.json",
        ],
        d,
    ));
    let evaluate = [
        "model", "evaluate", "--model", "m.json", "--input", "test.csv",
    ];
    assert_quiet("model evaluate | head", with_closed_stdout(&evaluate, d, 1));
    assert_quiet(
        "model evaluate, reader gone",
        with_closed_stdout(&evaluate, d, 0),
    );
    let json = [&evaluate[..], &["--output", "json"]].concat();
    assert_quiet(
        "model evaluate --output json",
        with_closed_stdout(&json, d, 0),
    );

    let sbx = stopped_sandbox(d, 3);
    let status = ["sandbox", "status", "--dir", sbx.to_str().unwrap()];
    assert_quiet(
        "sandbox status | head -1",
        with_closed_stdout(&status, d, 1),
    );
    assert_quiet(
        "sandbox status, reader gone",
        with_closed_stdout(&status, d, 0),
    );

    // Read to the end, the same commands still print everything.
    let all = ok(&bellwether(&evaluate, d));
    assert!(all.contains("Reliability"), "{all}");
}

/// `sandbox status` listed the scenario's own packages (made by `up`, before the baselines) as
/// injected drift; only what came after `up` is.
#[test]
fn sandbox_status_lists_only_the_drift_injected_after_up() {
    let tmp = tempfile::tempdir().unwrap();
    let sbx = stopped_sandbox(tmp.path(), 3);
    let dir = sbx.to_str().unwrap();
    let text = ok(&bellwether(
        &["sandbox", "status", "--dir", dir],
        tmp.path(),
    ));
    let row = |host: &str| {
        text.lines()
            .find(|l| l.starts_with(host))
            .unwrap_or_else(|| panic!("no row for {host}:\n{text}"))
            .to_string()
    };
    assert!(
        row("web-01").ends_with("load 12.00; nginx major upgrade"),
        "{text}"
    );
    for host in ["web-02", "web-03"] {
        assert!(!row(host).contains("libssl"), "{text}");
    }
    let json: serde_json::Value = serde_json::from_str(&ok(&bellwether(
        &["sandbox", "status", "--dir", dir, "--output", "json"],
        tmp.path(),
    )))
    .unwrap();
    let web01 = &json["hosts"][0];
    assert_eq!(web01["drifts"].as_array().unwrap().len(), 3, "{json:#}");
    assert_eq!(web01["injected"].as_array().unwrap().len(), 2, "{json:#}");
    assert_eq!(web01["injected"][0]["kind"], "load");
    assert_eq!(json["hosts"][1]["injected"], serde_json::json!([]));
}

/// `detect --help` and docs/detect.md pointed at ../shared/data, which a clone does not have.
/// The help's example runs from the repository, and `detect` says what it did.
#[test]
fn the_detect_help_example_runs_from_a_clone_and_prints_a_summary() {
    let help = ok(&bellwether(&["detect", "--help"], &repo()));
    assert!(!help.contains("../shared"), "{help}");
    let example = help
        .split("Example")
        .nth(1)
        .and_then(|e| {
            e.lines()
                .find(|l| l.trim_start().starts_with("bellwether detect"))
        })
        .unwrap_or_else(|| panic!("no example in:\n{help}"));
    let input = example
        .split_whitespace()
        .skip_while(|w| *w != "--input")
        .nth(1)
        .unwrap();
    assert!(
        repo().join(input).is_file(),
        "{input} is not in the repository"
    );

    let tmp = tempfile::tempdir().unwrap();
    let out_csv = tmp.path().join("latency.csv");
    let out = bellwether(
        &[
            "detect",
            "--input",
            input,
            "--output",
            out_csv.to_str().unwrap(),
        ],
        &repo(),
    );
    let stdout = ok(&out);
    assert_eq!(
        stdout.lines().count(),
        1,
        "one summary line: {}",
        describe(&out)
    );
    assert!(
        stdout.starts_with(&format!(
            "Scored 4032 rows of {input} with two-scale-entropy: "
        )) && stdout.contains(" alerts; wrote ")
            && stdout.trim_end().ends_with("latency.csv."),
        "{stdout}"
    );
    let rows = std::fs::read_to_string(&out_csv).unwrap().lines().count();
    assert_eq!(rows, 4033);
    // With the scores on stdout the summary goes to stderr, and stdout is only the CSV.
    let out = bellwether(&["detect", "--input", input, "--output", "-"], &repo());
    let csv = ok(&out);
    assert_eq!(csv.lines().count(), 4033);
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("Scored 4032 rows"));

    // The NAB-layout sample also feeds the scorer.
    let out = bellwether(&["bench", "nab", "--nab-dir", "examples/nab"], &repo());
    let text = ok(&out);
    assert!(
        text.starts_with("NAB corpus: 2 files, 5914 points, 5 windows"),
        "{text}"
    );
}

/// docs/predict.md's example ran on ../shared/data; it now makes its history with `model
/// synth`. Its commands, as written, run in an empty directory.
#[test]
fn the_predict_doc_example_runs_as_written() {
    let doc = std::fs::read_to_string(repo().join("docs/predict.md")).unwrap();
    for file in ["docs/predict.md", "docs/detect.md", "README.md"] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        assert!(
            !text.contains("../shared"),
            "{file} still points at ../shared"
        );
    }
    let block = doc
        .split("```sh\n")
        .find(|b| b.contains("model synth --out train.csv"))
        .and_then(|b| b.split("```").next())
        .expect("the example block");
    let tmp = tempfile::tempdir().unwrap();
    let mut ran = 0;
    for line in block.lines().filter(|l| l.starts_with("bellwether ")) {
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        let out = bellwether(&args, tmp.path());
        let stdout = ok(&out);
        if line.contains("model train") {
            assert!(stdout.contains("chosen over"), "{stdout}");
            assert!(!stdout.contains("(chose)"), "{stdout}");
            // Not a terminal: no spinner, no escape sequences.
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !stderr.contains('\r') && !stderr.contains('\u{1b}'),
                "{stderr:?}"
            );
        }
        if line.contains("model evaluate") {
            assert!(stdout.contains("oracle _p"), "{stdout}");
        }
        ran += 1;
    }
    assert_eq!(ran, 5, "{block}");
    assert!(tmp.path().join("p.csv").is_file());
}

/// `proxy --help` did not mention `password=` or `admin=maintenance`; `quickstart --help` did
/// not mention the rollouts, the story's main part.
#[test]
fn the_help_says_what_the_commands_do() {
    let proxy = ok(&bellwether(&["proxy", "--help"], &repo()));
    for want in [
        "weight=N",
        "admin=ready|drain|maintenance",
        "password=P",
        "role=primary|replica",
    ] {
        assert!(proxy.contains(want), "`{want}` not in:\n{proxy}");
    }
    let quickstart = ok(&bellwether(&["quickstart", "--help"], &repo()));
    for want in [
        "rollout",
        "held back",
        "pilot",
        "rolled back",
        "pauses",
        "learns",
    ] {
        assert!(quickstart.contains(want), "`{want}` not in:\n{quickstart}");
    }
    let short = ok(&bellwether(&["--help"], &repo()));
    let line = short
        .lines()
        .find(|l| l.trim_start().starts_with("quickstart"))
        .unwrap();
    assert!(line.contains("rollouts"), "{line}");
}
