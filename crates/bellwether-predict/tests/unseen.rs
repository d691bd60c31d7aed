//! Rows holding categories training never saw: they are averaged over the training rows, their
//! factors still add up to the calibrated log-odds, and `evaluate` scores them apart.

use std::sync::OnceLock;

use bellwether_predict::metrics::logit;
use bellwether_predict::synth::{Sample, Shape, World};
use bellwether_predict::{FeatureValue, Method, Model, TrainOptions};

struct Fixture {
    test: Sample,
    gbdt: Model,
    logistic: Model,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let world = World::new(4, &Shape::default());
        let train = world.sample(4_000, 11, 0.0);
        let test = world.sample(1_000, 12, 0.2);
        let fit = |method| {
            let opts = TrainOptions {
                method: Some(method),
                ..TrainOptions::default()
            };
            Model::train(&train.frame, &opts).expect("training succeeds")
        };
        Fixture {
            gbdt: fit(Method::Gbdt),
            logistic: fit(Method::Logistic),
            test,
        }
    })
}

/// The rows of the test sample with a new category, and the columns that hold them.
fn novel_rows(s: &Sample) -> Vec<(usize, Vec<String>)> {
    (0..s.frame.rows())
        .filter_map(|i| {
            let cols: Vec<String> = s
                .frame
                .names()
                .iter()
                .enumerate()
                .filter(|(j, _)| {
                    matches!(&s.frame.column_at(*j)[i], FeatureValue::Category(c) if c.contains("-new"))
                })
                .map(|(_, n)| n.clone())
                .collect();
            (!cols.is_empty()).then_some((i, cols))
        })
        .collect()
}

#[test]
fn calibrated_factors_add_up_on_rows_with_unseen_categories_and_theirs_are_zero() {
    let f = fixture();
    let novel = novel_rows(&f.test);
    assert!(
        novel.len() > 100,
        "{} rows with new categories",
        novel.len()
    );
    for model in [&f.gbdt, &f.logistic] {
        let cal = model.calibration();
        assert!(
            cal.slope != 1.0 || cal.intercept != 0.0,
            "a real calibration is applied"
        );
        let out = model.predict_frame(&f.test.frame).unwrap();
        let (fast, _) = model.probabilities(&f.test.frame).unwrap();
        for (i, cols) in &novel {
            let p = &out.predictions[*i];
            let prob = p.probability.get();
            let sum = p.base_value + p.contributing_factors.iter().map(|(_, v)| v).sum::<f64>();
            assert!(
                (logit(prob) - sum).abs() < 1e-9,
                "row {i}: {} vs {sum}",
                logit(prob)
            );
            assert!((fast[*i] - prob).abs() < 1e-12);
            for c in cols {
                let (_, v) = p.contributing_factors.iter().find(|(n, _)| n == c).unwrap();
                assert_eq!(*v, 0.0, "row {i}: the unseen `{c}` contributes nothing");
            }
        }
    }
}

#[test]
fn an_unseen_category_is_predicted_as_if_the_column_were_unknown() {
    // Two different new names give the same prediction, and the factor of the column is zero
    // whatever the name; a known category moves the prediction.
    let f = fixture();
    let (i, cols) = novel_rows(&f.test).into_iter().next().unwrap();
    let names = f.test.frame.names().to_vec();
    let row: std::collections::HashMap<String, FeatureValue> = names
        .iter()
        .enumerate()
        .map(|(j, n)| (n.clone(), f.test.frame.column_at(j)[i].clone()))
        .collect();
    let a = f.gbdt.predict_row(&row).unwrap();
    let mut other = row.clone();
    other.insert(
        cols[0].clone(),
        FeatureValue::Category("never-heard-of-it".into()),
    );
    let b = f.gbdt.predict_row(&other).unwrap();
    assert_eq!(a.probability, b.probability);
    let mut before = f.gbdt.clone();
    before.set_average_unknown(false);
    let routed = before.predict_row(&row).unwrap();
    assert!(routed
        .contributing_factors
        .iter()
        .any(|(n, v)| cols.contains(n) && *v != 0.0));
}

#[test]
fn evaluate_scores_rows_with_unseen_categories_apart() {
    let f = fixture();
    let novel = novel_rows(&f.test);
    let ev = f.gbdt.evaluate(&f.test.frame).unwrap();
    let split = ev.unseen_split.as_ref().expect("a split");
    let unseen = split.unseen.as_ref().expect("rows with new categories");
    let seen = split.seen.as_ref().expect("rows without");
    // Rows with a new category are unseen; with these features nothing else is unknown
    // (training saw missing cells in every column).
    assert_eq!(unseen.model.rows, novel.len());
    assert_eq!(unseen.model.rows + seen.model.rows, ev.model.rows);
    let mut per_column = std::collections::BTreeMap::new();
    for (_, cols) in &novel {
        for c in cols {
            *per_column.entry(c.clone()).or_insert(0usize) += 1;
        }
    }
    let reported: std::collections::BTreeMap<String, usize> =
        split.unseen_by_feature.iter().cloned().collect();
    assert_eq!(reported, per_column);
    for part in [unseen, seen] {
        assert!(part.oracle.is_some() && part.brier_ratio.unwrap() > 0.5);
        assert!((0.0..1.0).contains(&part.model.calibration_error));
    }
    // The parts' Brier scores make up the whole.
    let n = ev.model.rows as f64;
    let whole = (unseen.model.brier * unseen.model.rows as f64
        + seen.model.brier * seen.model.rows as f64)
        / n;
    assert!((whole - ev.model.brier).abs() < 1e-12);
    let json = serde_json::to_value(&ev).unwrap();
    assert!(json["unseen_split"]["unseen"]["model"]["calibration_error"].is_number());
}

#[test]
fn a_file_without_new_categories_has_no_unseen_part() {
    let f = fixture();
    let clean = World::new(4, &Shape::default()).sample(500, 13, 0.0);
    let split = f.gbdt.evaluate(&clean.frame).unwrap().unseen_split.unwrap();
    assert!(split.unseen.is_none() && split.unseen_by_feature.is_empty());
    assert_eq!(split.seen.unwrap().model.rows, 500);
}
