//! `bellwether detect` and `bellwether judge` as a user runs them, through the built binary:
//! the output rows, the exit codes, and the messages for bad input.

use std::path::Path;
use std::process::{Command, Output};

fn bellwether(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bellwether"))
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

/// A series with a short cycle and one large spike at row 1500, after every detector learnt.
fn series_csv(rows: usize) -> String {
    let mut s = String::from("timestamp,value\n");
    for i in 0..rows {
        let ts = 1_700_000_000 + i as i64 * 300;
        let v = if i == 1500 {
            500.0
        } else {
            10.0 + ((i % 24) as f64 / 24.0 * std::f64::consts::TAU).sin()
        };
        s.push_str(&format!("{ts},{v}\n"));
    }
    s
}

#[test]
fn detect_writes_one_row_per_input_row() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("in.csv"), series_csv(2000)).unwrap();
    for detector in [
        "two-scale-entropy",
        "seasonal-cusum",
        "relative-entropy",
        "seasonal",
        "cad",
    ] {
        let out = bellwether(
            &[
                "detect",
                "--input",
                "in.csv",
                "--output",
                "out.csv",
                "--detector",
                detector,
            ],
            d,
        );
        assert!(out.status.success(), "{detector}: {}", describe(&out));
        let text = std::fs::read_to_string(d.join("out.csv")).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("timestamp,value,score,alert"));
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        assert_eq!(rows.len(), 2000, "{detector}");
        let mut alerts = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r.len(), 4, "{detector} row {i}: {r:?}");
            assert_eq!(r[0], (1_700_000_000 + i as i64 * 300).to_string());
            let score: f64 = r[2].parse().unwrap();
            assert!((0.0..=1.0).contains(&score), "{detector} row {i}: {score}");
            assert!(r[3] == "0" || r[3] == "1", "{detector} row {i}: {r:?}");
            if r[3] == "1" {
                alerts.push(i);
            }
        }
        assert!(
            alerts.contains(&1500),
            "{detector} did not alert on the spike: {alerts:?}"
        );
    }
}

#[test]
fn detect_rejects_bad_input_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let files = [
        ("nocol.csv", "timestamp,reading\n100,1\n"),
        ("nan.csv", "timestamp,value\n100,1\n200,abc\n"),
        ("empty.csv", ""),
    ];
    for (name, body) in files {
        std::fs::write(d.join(name), body).unwrap();
    }
    let expect = [
        ("nocol.csv", "nocol.csv: line 1: missing column `value`"),
        (
            "nan.csv",
            "nan.csv: line 3, column `value`: cannot parse `abc`",
        ),
        ("empty.csv", "empty.csv: the file is empty"),
    ];
    for (name, message) in expect {
        let out = bellwether(&["detect", "--input", name, "--output", "out.csv"], d);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{name}: {}", describe(&out));
    }
    assert!(
        !d.join("out.csv").exists(),
        "bad input must not write output"
    );
}

/// Issue 10: `detect` refused real NAB files that `bench nab` accepted. A timestamp repeated at
/// a daylight-saving change is accepted silently; one that goes back is accepted with a warning
/// naming the file and line; every row is scored, in file order.
#[test]
fn detect_accepts_repeated_timestamps_and_warns_on_ones_going_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut dst = String::from("timestamp,value\n");
    for i in 0..288 {
        let (h, m) = (i / 12, (i % 12) * 5);
        dst.push_str(&format!(
            "2014-03-08 {:02}:{:02}:00,{}\n",
            h % 24,
            m,
            10 + i % 3
        ));
    }
    dst.push_str("2014-03-09 03:00:00,11\n2014-03-09 03:00:00,12\n2014-03-09 03:05:00,10\n");
    std::fs::write(d.join("dst.csv"), &dst).unwrap();
    std::fs::write(d.join("back.csv"), "timestamp,value\n100,1\n200,2\n150,3\n").unwrap();
    // Local times with their UTC offset across both clock changes: the local hour repeats
    // in November, the instants never go back.
    std::fs::write(
        d.join("offsets.csv"),
        "timestamp,value\n2014-03-09T01:55:00-05:00,1\n2014-03-09T03:00:00-04:00,2\n\
         2014-11-02T01:55:00-04:00,3\n2014-11-02T01:00:00-05:00,4\n2014-11-02T01:05:00-05:00,5\n",
    )
    .unwrap();
    for (name, rows, warning) in [
        ("dst.csv", 291, None),
        ("offsets.csv", 5, None),
        (
            "back.csv",
            3,
            Some("back.csv: line 4: timestamp `150` is before the previous row's `200`"),
        ),
    ] {
        for detector in ["two-scale-entropy", "seasonal-cusum"] {
            let out = bellwether(
                &[
                    "detect",
                    "--input",
                    name,
                    "--output",
                    "-",
                    "--detector",
                    detector,
                ],
                d,
            );
            assert!(out.status.success(), "{name}: {}", describe(&out));
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(stdout.lines().count(), rows + 1, "{name}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            match warning {
                Some(w) => assert!(stderr.contains(w), "{name}: {}", describe(&out)),
                None => assert!(
                    !stderr.contains("is before the previous row's"),
                    "{name}: {}",
                    describe(&out)
                ),
            }
        }
    }
}

#[test]
fn detect_rejects_an_unknown_detector() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("in.csv"), series_csv(10)).unwrap();
    let out = bellwether(
        &[
            "detect",
            "--input",
            "in.csv",
            "--output",
            "-",
            "--detector",
            "nope",
        ],
        d,
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown detector `nope`"));
}

fn samples(values: impl Iterator<Item = f64>) -> String {
    let mut s = String::from("value\n");
    for v in values {
        s.push_str(&format!("{v}\n"));
    }
    s
}

#[test]
fn judge_passes_a_healthy_canary_and_fails_a_slow_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = |i: usize| 100.0 + ((i * 37) % 21) as f64;
    std::fs::write(d.join("control.csv"), samples((0..200).map(base))).unwrap();
    std::fs::write(d.join("same.csv"), samples((0..200).map(|i| base(i + 5)))).unwrap();
    std::fs::write(d.join("slow.csv"), samples((0..200).map(|i| base(i) * 1.6))).unwrap();

    let out = bellwether(
        &[
            "judge",
            "--control",
            "control.csv",
            "--experiment",
            "same.csv",
            "--output",
            "json",
        ],
        d,
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["outcome"], "pass", "{j}");
    assert_eq!(j["score"], 100.0, "{j}");

    let out = bellwether(
        &[
            "judge",
            "--control",
            "control.csv",
            "--experiment",
            "slow.csv",
            "--direction",
            "increase",
            "--output",
            "json",
        ],
        d,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["outcome"], "fail", "{j}");
    assert_eq!(j["score"], 0.0, "{j}");
    assert_eq!(j["metrics"][0]["name"], "value", "{j}");

    // A decrease is not bad when only an increase is.
    let out = bellwether(
        &[
            "judge",
            "--control",
            "slow.csv",
            "--experiment",
            "control.csv",
            "--direction",
            "increase",
        ],
        d,
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

#[test]
fn judge_rejects_bad_input_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("control.csv"), "value\n1\n2\n3\n").unwrap();
    std::fs::write(d.join("bad.csv"), "value\n1\nx\n").unwrap();
    let out = bellwether(
        &[
            "judge",
            "--control",
            "control.csv",
            "--experiment",
            "bad.csv",
        ],
        d,
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.csv: line 3"),
        "{}",
        describe(&out)
    );
}

/// Issue 9: `--allowed-increase nan` made every comparison false, so a clear regression passed.
/// Every float flag refuses NaN and infinities with exit 2 and names the flag.
#[test]
fn judge_refuses_non_finite_flags() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = |i: usize| 100.0 + ((i * 37) % 21) as f64;
    std::fs::write(d.join("control.csv"), samples((0..200).map(base))).unwrap();
    std::fs::write(d.join("slow.csv"), samples((0..200).map(|i| base(i) * 1.6))).unwrap();
    for flag in [
        "--allowed-increase",
        "--allowed-decrease",
        "--critical-increase",
        "--critical-decrease",
        "--iqr",
        "--confidence",
        "--tolerance",
        "--pass",
        "--marginal",
    ] {
        for bad in ["nan", "NaN", "inf", "-inf", "infinity", "1e999"] {
            let value = format!("{flag}={bad}");
            let out = bellwether(
                &[
                    "judge",
                    "--control",
                    "control.csv",
                    "--experiment",
                    "slow.csv",
                    &value,
                ],
                d,
            );
            assert_eq!(out.status.code(), Some(2), "{value}: {}", describe(&out));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(flag) && err.contains("not a finite number"),
                "{value}: {}",
                describe(&out)
            );
        }
    }
}

/// Issue 9: control all −1e308 against experiment all +1e308 passed: the shift and the mean
/// ratio overflowed to infinity and NaN, and every comparison with NaN is false. A metric whose
/// figures are not finite never passes.
#[test]
fn judge_never_passes_an_overflowing_comparison() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("low.csv"), samples((0..50).map(|_| -1e308))).unwrap();
    std::fs::write(d.join("high.csv"), samples((0..50).map(|_| 1e308))).unwrap();
    std::fs::write(
        d.join("big.csv"),
        samples((0..50).map(|i| 1e308 + i as f64 * 1e292)),
    )
    .unwrap();
    std::fs::write(
        d.join("bigger.csv"),
        samples((0..50).map(|i| 1.7e308 + i as f64 * 1e292)),
    )
    .unwrap();
    for (control, experiment, direction) in [
        ("low.csv", "high.csv", "increase"),
        ("high.csv", "low.csv", "decrease"),
        ("low.csv", "high.csv", "either"),
        ("big.csv", "bigger.csv", "increase"),
    ] {
        let out = bellwether(
            &[
                "judge",
                "--control",
                control,
                "--experiment",
                experiment,
                "--direction",
                direction,
                "--output",
                "json",
            ],
            d,
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "{control} vs {experiment}: {}",
            describe(&out)
        );
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_ne!(j["outcome"], "pass", "{j}");
    }
}

/// Issue 9: `2024-02-30` and an unterminated quote were accepted, and an error echoed a 50 MB
/// field whole. Each is now exit 2 with the file and line, quoting at most a few hundred bytes.
#[test]
fn detect_refuses_impossible_dates_open_quotes_and_quotes_little() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: [(&str, String, &str); 3] = [
        (
            "date.csv",
            "timestamp,value\n2024-02-28 00:00:00,1\n2024-02-30 00:00:00,2\n".into(),
            "date.csv: line 3, column `timestamp`: cannot parse `2024-02-30 00:00:00` as a timestamp",
        ),
        (
            "quote.csv",
            "timestamp,value\n1,1\n2,\"2\n3,3\n4,4\n".into(),
            "quote.csv: line 3, column `value`: a quoted field is never closed",
        ),
        (
            "huge.csv",
            format!("timestamp,value\n1,1\n2,{}x\n", "7".repeat(50 << 20)),
            "huge.csv: line 3, column `value`: cannot parse `777",
        ),
    ];
    for (name, text, expect) in cases {
        std::fs::write(d.join(name), text).unwrap();
        let out = bellwether(&["detect", "--input", name, "--output", "-"], d);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(expect),
            "{name}: {}",
            &err[..err.len().min(600)]
        );
        assert!(err.len() < 1000, "{name}: {} bytes of error", err.len());
        assert!(out.stdout.is_empty(), "{name}");
    }
}
