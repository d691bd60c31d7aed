//! `bellwether model` end to end, as a user runs it: synthesise a history, train, predict,
//! evaluate; and the exit code and message for bad input.

use std::path::Path;
use std::process::{Command, Output};

fn bellwether(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bellwether"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the bellwether binary runs")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn synth_train_predict_evaluate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&bellwether(
        &[
            "model",
            "synth",
            "--out",
            "train.csv",
            "--rows",
            "3000",
            "--world",
            "3",
            "--seed",
            "1",
        ],
        d,
    ));
    ok(&bellwether(
        &[
            "model", "synth", "--out", "test.csv", "--rows", "1000", "--world", "3", "--seed", "2",
            "--novel", "0.05",
        ],
        d,
    ));
    let summary = ok(&bellwether(
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
    assert!(
        summary.contains("Skipped `run_id`: an identifier"),
        "{summary}"
    );
    assert!(
        summary.contains("Skipped `_p`: name starts with `_`"),
        "{summary}"
    );
    assert!(
        summary.contains("Held-out gradient-boosted trees: AUC"),
        "{summary}"
    );

    ok(&bellwether(
        &[
            "model", "predict", "--model", "m.json", "--input", "test.csv", "--output", "p.csv",
        ],
        d,
    ));
    let p = std::fs::read_to_string(d.join("p.csv")).unwrap();
    let mut lines = p.lines();
    assert_eq!(lines.next(), Some("row,probability,top_factors"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 1000);
    for (i, line) in rows.iter().enumerate() {
        let mut parts = line.splitn(3, ',');
        assert_eq!(parts.next().unwrap(), i.to_string());
        let prob: f64 = parts.next().unwrap().parse().unwrap();
        assert!((0.0..=1.0).contains(&prob));
        let factors: Vec<f64> = parts
            .next()
            .unwrap()
            .split(';')
            .map(|kv| {
                kv.split_once('=')
                    .expect("column=contribution")
                    .1
                    .parse()
                    .unwrap()
            })
            .collect();
        assert_eq!(factors.len(), 3, "{line}");
        assert!(factors.windows(2).all(|w| w[0] >= w[1]), "{line}");
    }

    let json = ok(&bellwether(
        &[
            "model", "evaluate", "--model", "m.json", "--input", "test.csv", "--output", "json",
        ],
        d,
    ));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let ratio = v["auc_ratio"].as_f64().expect("the synthetic file has _p");
    assert!(ratio > 0.85, "AUC ratio {ratio}");
    assert!(v["model"]["reliability"]
        .as_array()
        .is_some_and(|r| !r.is_empty()));
    // --novel 0.05 put new categories in the test file: their rows are scored apart.
    let unseen = &v["unseen_split"]["unseen"];
    assert!(
        unseen["model"]["rows"].as_u64().is_some_and(|n| n > 0),
        "{v}"
    );
    assert!(unseen["model"]["calibration_error"].is_number(), "{v}");
    assert!(unseen["model"]["brier"].is_number(), "{v}");
    assert!(unseen["brier_ratio"].is_number(), "{v}");
    assert!(
        v["unseen_split"]["seen"]["model"]["brier"].is_number(),
        "{v}"
    );
    let human = ok(&bellwether(
        &[
            "model", "evaluate", "--model", "m.json", "--input", "test.csv",
        ],
        d,
    ));
    assert!(human.contains("AUC ratio to the oracle"), "{human}");
    assert!(human.contains("Reliability"), "{human}");
    assert!(
        human.contains("Rows holding values training never saw"),
        "{human}"
    );
    assert!(human.lines().any(|l| l.starts_with("unseen ")), "{human}");
    assert!(human.lines().any(|l| l.starts_with("seen ")), "{human}");
}

#[test]
fn bad_input_exits_2_with_a_message_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("ragged.csv"), "size,outcome\n1,1\n2\n").unwrap();
    let out = bellwether(
        &[
            "model",
            "train",
            "--history",
            "ragged.csv",
            "--out",
            "m.json",
        ],
        d,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("ragged.csv: line 3 has 1 fields but the header has 2"));

    std::fs::write(
        d.join("m.json"),
        r#"{"format":"bellwether-predict-model","version":99}"#,
    )
    .unwrap();
    std::fs::write(d.join("x.csv"), "size\n1\n").unwrap();
    let out = bellwether(
        &[
            "model", "predict", "--model", "m.json", "--input", "x.csv", "--output", "p.csv",
        ],
        d,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("m.json: model file version 99 is not supported"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
