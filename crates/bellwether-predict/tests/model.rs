//! Black-box tests of training, prediction, explanation and the model file, on synthetic
//! histories made by the crate's own generator (no external data).

use std::collections::HashMap;
use std::sync::OnceLock;

use bellwether_predict::metrics::logit;
use bellwether_predict::model::probability_from_factors;
use bellwether_predict::shap::ShapBuffer;
use bellwether_predict::synth::{Sample, Shape, World};
use bellwether_predict::{
    FeatureValue, Frame, Method, Model, PredictError, TrainOptions, TrainingRow,
};
use proptest::prelude::*;

struct Fixture {
    test: Sample,
    gbdt: Model,
    logistic: Model,
}

/// One world, trained once for all tests: 6,000 training rows, 3,000 test rows of which 5 %
/// of categorical cells hold categories the training rows never had.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let world = World::new(1, &Shape::default());
        let train = world.sample(6_000, 10, 0.0);
        let test = world.sample(3_000, 20, 0.05);
        let gbdt = Model::train(&train.frame, &TrainOptions::default()).expect("training succeeds");
        let logistic = Model::train(
            &train.frame,
            &TrainOptions {
                method: Some(Method::Logistic),
                ..Default::default()
            },
        )
        .expect("training succeeds");
        Fixture {
            test,
            gbdt,
            logistic,
        }
    })
}

#[test]
fn trees_beat_the_logistic_baseline_and_stay_calibrated_on_unseen_rows() {
    let f = fixture();
    assert_eq!(
        f.gbdt.method(),
        Method::Gbdt,
        "held-out log loss should choose the trees"
    );
    let g = f.gbdt.evaluate(&f.test.frame).unwrap();
    let l = f.logistic.evaluate(&f.test.frame).unwrap();
    let (ga, la) = (g.model.roc_auc.unwrap(), l.model.roc_auc.unwrap());
    assert!(ga > la + 0.02, "trees AUC {ga:.4} vs logistic {la:.4}");
    let ratio = g.auc_ratio.unwrap();
    assert!(ratio > 0.9, "AUC ratio to the oracle {ratio:.4}");
    assert!(
        g.brier_ratio.unwrap() < 1.10,
        "Brier ratio {:.4}",
        g.brier_ratio.unwrap()
    );
    // Calibration: predicted and observed rates agree within each reliability bin with many
    // rows, and overall.
    assert!(
        g.model.calibration_error < 0.03,
        "ECE {:.4}",
        g.model.calibration_error
    );
    for b in g.model.reliability.iter().filter(|b| b.rows >= 300) {
        assert!(
            (b.mean_probability - b.observed_rate).abs() < 0.06,
            "bin [{}, {}): predicted {:.3}, observed {:.3}",
            b.low,
            b.high,
            b.mean_probability,
            b.observed_rate
        );
    }
}

#[test]
fn contributions_and_base_value_sum_to_the_raw_margin_for_every_row() {
    let f = fixture();
    for model in [&f.gbdt, &f.logistic] {
        let (x, _) = model.prepare(&f.test.frame).unwrap();
        // The batched path and the one-row path agree.
        let batch = model.probabilities_prepared(&x);
        for (i, p) in batch.iter().enumerate() {
            assert!((p - model.probability_prepared(x.row(i))).abs() < 1e-12);
        }
        let mut phi = vec![0.0; model.features().len()];
        let mut buf = ShapBuffer::default();
        for i in 0..x.rows() {
            let base = model.raw_contributions(x.row(i), &mut phi, &mut buf);
            let sum = base + phi.iter().sum::<f64>();
            let margin = model.margin_prepared(x.row(i));
            assert!(
                (sum - margin).abs() < 1e-9,
                "{:?} row {i}: {sum} vs {margin}",
                model.method()
            );
        }
    }
}

#[test]
fn calibrated_factors_add_up_to_the_probability() {
    let f = fixture();
    let out = f.gbdt.predict_frame(&f.test.frame).unwrap();
    assert_eq!(out.predictions.len(), f.test.frame.rows());
    for p in &out.predictions {
        let from_factors = probability_from_factors(p);
        assert!((from_factors - p.probability.get()).abs() < 1e-9);
        assert!(
            p.contributing_factors.windows(2).all(|w| w[0].1 >= w[1].1),
            "factors are ordered by decreasing contribution toward failure"
        );
        assert_eq!(p.contributing_factors.len(), f.gbdt.features().len());
    }
}

#[test]
fn the_interaction_is_explained_by_its_features() {
    // World 1 makes its first numeric column matter only for one category of its first
    // categorical column; the explanation must give that numeric column weight.
    let f = fixture();
    let out = f.gbdt.predict_frame(&f.test.frame).unwrap();
    let names = World::new(1, &Shape::default()).column_names();
    let first_numeric = &names[1];
    let mean_abs: f64 = out
        .predictions
        .iter()
        .map(|p| {
            p.contributing_factors
                .iter()
                .find(|(c, _)| c == first_numeric)
                .unwrap()
                .1
                .abs()
        })
        .sum::<f64>()
        / out.predictions.len() as f64;
    assert!(
        mean_abs > 0.05,
        "mean |contribution| of {first_numeric}: {mean_abs}"
    );
}

#[test]
fn model_file_round_trips_with_identical_predictions() {
    let f = fixture();
    for model in [&f.gbdt, &f.logistic] {
        let mut bytes = Vec::new();
        model.write(&mut bytes, "m.json").unwrap();
        let back = Model::read(bytes.as_slice(), "m.json").unwrap();
        let (a, _) = model.probabilities(&f.test.frame).unwrap();
        let (b, _) = back.probabilities(&f.test.frame).unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn another_version_another_format_or_a_corrupt_file_is_refused() {
    let f = fixture();
    let mut bytes = Vec::new();
    f.gbdt.write(&mut bytes, "m.json").unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["version"] = serde_json::json!(2);
    let err = Model::read(v.to_string().as_bytes(), "m.json").unwrap_err();
    assert_eq!(
        err.to_string(),
        "m.json: model file version 2 is not supported; this build reads version 1, retrain the model with `bellwether model train`"
    );
    v["version"] = serde_json::json!(1);
    v["format"] = serde_json::json!("something-else");
    let err = Model::read(v.to_string().as_bytes(), "m.json").unwrap_err();
    assert_eq!(
        err.to_string(),
        "m.json: not a bellwether model file (format is `something-else`, expected `bellwether-predict-model`)"
    );
    let err = Model::read(&bytes[..bytes.len() / 2], "m.json").unwrap_err();
    assert!(matches!(err, PredictError::CorruptModel { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("m.json: the model file is corrupt: "),
        "{err}"
    );
    // Too deep to explain: a chain of 40 splits.
    // Node 2i is split i (its left child 2i+1 is a leaf, its right child the next split).
    let mut fixed = Vec::new();
    for i in 0..40u32 {
        fixed.push(serde_json::json!({"node": "split", "feature": 0, "left": 2 * i + 1, "right": 2 * i + 2, "cover": 1.0,
            "rule": {"kind": "numeric", "threshold": 0.0, "missing_left": true}}));
        fixed.push(serde_json::json!({"node": "leaf", "value": 0.0, "cover": 1.0}));
    }
    fixed.push(serde_json::json!({"node": "leaf", "value": 0.0, "cover": 1.0}));
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["estimator"]["trees"][0]["nodes"] = serde_json::Value::Array(fixed);
    let err = Model::read(v.to_string().as_bytes(), "m.json").unwrap_err();
    assert_eq!(
        err.to_string(),
        "m.json: the model file is corrupt: tree 0: a tree is deeper than 32"
    );
    // Structurally damaged: a child pointing back at its parent.
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["estimator"]["trees"][0]["nodes"][0]["left"] = serde_json::json!(0);
    let err = Model::read(v.to_string().as_bytes(), "m.json").unwrap_err();
    assert_eq!(
        err.to_string(),
        "m.json: the model file is corrupt: tree 0: node 0 has children 0 and 2"
    );
}

#[test]
fn unseen_categories_missing_cells_and_absent_columns_still_predict() {
    let f = fixture();
    let mut row: HashMap<String, FeatureValue> = HashMap::new();
    for feat in f.gbdt.features() {
        let v = if feat.is_categorical() {
            FeatureValue::Category("never-seen-before".into())
        } else {
            FeatureValue::Missing
        };
        row.insert(feat.name.clone(), v);
    }
    let p = f.gbdt.predict_row(&row).unwrap();
    assert!((probability_from_factors(&p) - p.probability.get()).abs() < 1e-9);
    let empty = f.gbdt.predict_row(&HashMap::new()).unwrap();
    assert!(empty.probability.get() > 0.0 && empty.probability.get() < 1.0);
    let num = f
        .gbdt
        .features()
        .iter()
        .find(|f| !f.is_categorical())
        .unwrap();
    let bad = HashMap::from([(num.name.clone(), FeatureValue::Category("lots".into()))]);
    let err = f.gbdt.predict_row(&bad).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("feature `{}`: expected a number, found `lots`", num.name)
    );
}

#[test]
fn training_from_in_memory_rows_works_like_a_file() {
    let world = World::new(
        3,
        &Shape {
            numeric: 4,
            categorical: 2,
            missing_rate: 0.1,
            base_rate: 0.3,
        },
    );
    let s = world.sample(800, 1, 0.0);
    let names = s.frame.names().to_vec();
    let rows: Vec<TrainingRow> = (0..s.frame.rows())
        .map(|i| TrainingRow {
            features: names
                .iter()
                .filter(|n| *n != "outcome")
                .map(|n| (n.clone(), s.frame.column(n).unwrap()[i].clone()))
                .collect(),
            failed: s.failed[i],
        })
        .collect();
    let model = Model::train_rows(&rows, &TrainOptions::default()).unwrap();
    let skipped: Vec<&str> = model
        .summary()
        .skipped
        .iter()
        .map(|s| s.column.as_str())
        .collect();
    assert!(
        skipped.contains(&"run_id") && skipped.contains(&"_p") && skipped.contains(&"outcome"),
        "{skipped:?}"
    );
    let p = model.predict_row(&rows[0].features).unwrap();
    assert!(p.contributing_factors.len() >= 3);
}

fn csv_frame(text: &str) -> Frame {
    Frame::from_csv(text.as_bytes(), "h.csv").unwrap()
}

#[test]
fn bad_histories_get_errors_that_name_the_column() {
    let mut one_class = String::from("size,outcome\n");
    for i in 0..30 {
        one_class.push_str(&format!("{i},success\n"));
    }
    let err = Model::train(&csv_frame(&one_class), &TrainOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "h.csv: column `outcome` holds only success rows (30 of them); training needs both failures and successes"
    );
    let err = Model::train(
        &csv_frame("size,result\n1,1\n2,0\n"),
        &TrainOptions::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "h.csv: no label column `outcome` (the columns are: size, result)"
    );
    let err = Model::train(
        &csv_frame("size,outcome\n1,1\n2,0\n"),
        &TrainOptions::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "h.csv: too few rows to train (2); at least 20 are needed"
    );
    let mut ids_only = String::from("host,outcome\n");
    for i in 0..40 {
        ids_only.push_str(&format!("h{i},{}\n", i % 2));
    }
    let err = Model::train(&csv_frame(&ids_only), &TrainOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "h.csv: no usable feature columns remain (`host`: an identifier (a distinct value in nearly every row); `outcome`: the label)"
    );
}

#[test]
fn labels_in_words_train_the_same_as_numbers() {
    let world = World::new(
        2,
        &Shape {
            numeric: 3,
            categorical: 1,
            missing_rate: 0.0,
            base_rate: 0.3,
        },
    );
    let s = world.sample(400, 3, 0.0);
    let words = s.frame.names().to_vec();
    let cols: Vec<Vec<FeatureValue>> = (0..words.len())
        .map(|i| {
            let c = s.frame.column_at(i).to_vec();
            if words[i] == "outcome" {
                c.iter()
                    .map(|v| {
                        FeatureValue::Category(
                            if *v == FeatureValue::Number(1.0) {
                                "Failure"
                            } else {
                                "SUCCESS"
                            }
                            .into(),
                        )
                    })
                    .collect()
            } else {
                c
            }
        })
        .collect();
    let a = Model::train(&s.frame, &TrainOptions::default()).unwrap();
    let b = Model::train(
        &Frame::from_columns("w", words, cols).unwrap(),
        &TrainOptions::default(),
    )
    .unwrap();
    let (pa, _) = a.probabilities(&s.frame).unwrap();
    let (pb, _) = b.probabilities(&s.frame).unwrap();
    assert_eq!(pa, pb);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn any_row_gets_a_probability_in_range_whose_factors_add_up(
        nums in proptest::collection::vec(prop_oneof![Just(f64::NAN), -1e9f64..1e9, -5.0f64..5.0], 16),
        cats in proptest::collection::vec("[a-z0-9-]{0,8}", 8),
    ) {
        let f = fixture();
        let mut row = HashMap::new();
        let (mut ni, mut ci) = (0, 0);
        for feat in f.gbdt.features() {
            let v = if feat.is_categorical() {
                ci += 1;
                FeatureValue::parse(&cats[(ci - 1) % cats.len()])
            } else {
                ni += 1;
                let x = nums[(ni - 1) % nums.len()];
                if x.is_nan() { FeatureValue::Missing } else { FeatureValue::Number(x) }
            };
            let v = match (feat.is_categorical(), v) {
                (false, FeatureValue::Category(_)) => FeatureValue::Missing,
                (_, v) => v,
            };
            row.insert(feat.name.clone(), v);
        }
        for model in [&f.gbdt, &f.logistic] {
            let p = model.predict_row(&row).unwrap();
            let prob = p.probability.get();
            prop_assert!((0.0..=1.0).contains(&prob));
            let l = logit(prob);
            let s = p.base_value + p.contributing_factors.iter().map(|(_, v)| v).sum::<f64>();
            if prob > 1e-12 && prob < 1.0 - 1e-12 {
                prop_assert!((l - s).abs() < 1e-6, "{} vs {}", l, s);
            }
        }
    }
}
