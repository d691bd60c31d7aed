#![allow(clippy::approx_constant, clippy::excessive_precision)]
// The reference vectors are written as R printed them (17 digits), and 3.14 is data.

use super::*;
use proptest::prelude::*;

// Reference vectors from R 4.2 (Debian r-base-core), computed with:
//
//   options(digits = 17)
//   show <- function(name, x, y) {
//     r <- suppressWarnings(wilcox.test(x, y, conf.int = TRUE, exact = FALSE, conf.level = 0.98))
//     cat(name, r$statistic, r$p.value, r$estimate, r$conf.int, "\n")
//   }
//   show("a", c(1.83,0.50,1.62,2.48,1.68,1.88,1.55,3.06,1.30),
//             c(0.878,0.647,0.598,2.05,1.06,1.29,1.06,3.14,1.29))
//   show("b", c(10.1,11.3,12.0,10.7,13.2,12.5,11.9,14.1,12.2,11.0),
//             c(9.8,10.2,10.9,9.5,10.4,11.1,10.0,9.9))
//   show("c", c(1,2,2,3,3,3,4,5), c(2,3,3,4,4,5,5,5,6))
//   show("d", c(5.0,5.5,6.1,4.9,5.2), c(5.1,5.3,4.8,5.0,5.6,5.4))
//
// R finds the interval ends and the estimate with `uniroot(tol = 1e-4)`, so those agree to
// about 1e-4; W and the p-value are exact.
struct Vector {
    x: &'static [f64],
    y: &'static [f64],
    w: f64,
    p: f64,
    est: f64,
    lo: f64,
    hi: f64,
}

const VECTORS: [Vector; 4] = [
    Vector {
        x: &[1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30],
        y: &[0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29],
        w: 58.0,
        p: 0.132_919_458_185_318_86,
        est: 0.560_056_160_835_873_4,
        lo: -0.559_951_695_263_183_67,
        hi: 1.232_960_408_303_311,
    },
    Vector {
        x: &[10.1, 11.3, 12.0, 10.7, 13.2, 12.5, 11.9, 14.1, 12.2, 11.0],
        y: &[9.8, 10.2, 10.9, 9.5, 10.4, 11.1, 10.0, 9.9],
        w: 73.0,
        p: 0.003_880_688_445_956_540_6,
        est: 1.600_043_196_438_652_8,
        lo: 0.399_997_725_040_300_07,
        hi: 2.999_981_390_953_732_1,
    },
    Vector {
        x: &[1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 4.0, 5.0],
        y: &[2.0, 3.0, 3.0, 4.0, 4.0, 5.0, 5.0, 5.0, 6.0],
        w: 17.5,
        p: 0.076_088_630_102_649_574,
        est: -1.000_077_587_886_193_2,
        lo: -3.000_024_269_571_601_3,
        hi: 2.182_947_541_604_531_4e-5,
    },
    Vector {
        x: &[5.0, 5.5, 6.1, 4.9, 5.2],
        y: &[5.1, 5.3, 4.8, 5.0, 5.6, 5.4],
        w: 16.5,
        p: 0.854_805_435_691_018_97,
        est: 0.099_931_896_217_928_654,
        lo: -0.599_955_028_283_060_58,
        hi: 1.099_915_871_370_527_5,
    },
];

#[test]
fn matches_r_wilcox_test() {
    for (i, v) in VECTORS.iter().enumerate() {
        let r = mann_whitney(v.x, v.y, 0.98).unwrap();
        assert_eq!(r.w, v.w, "vector {i}");
        assert!(
            (r.p_value - v.p).abs() < 1e-12,
            "vector {i}: p {} vs {}",
            r.p_value,
            v.p
        );
        assert!(
            (r.estimate - v.est).abs() < 2e-4,
            "vector {i}: est {} vs {}",
            r.estimate,
            v.est
        );
        assert!(
            (r.lower - v.lo).abs() < 2e-4,
            "vector {i}: lo {} vs {}",
            r.lower,
            v.lo
        );
        assert!(
            (r.upper - v.hi).abs() < 2e-4,
            "vector {i}: hi {} vs {}",
            r.upper,
            v.hi
        );
    }
}

#[test]
fn all_tied_is_a_zero_shift() {
    let r = mann_whitney(&[3.0, 3.0], &[3.0, 3.0, 3.0], 0.98).unwrap();
    assert_eq!(
        (r.estimate, r.lower, r.upper, r.p_value),
        (0.0, 0.0, 0.0, 1.0)
    );
}

#[test]
fn rejects_bad_samples() {
    assert_eq!(
        mann_whitney(&[], &[1.0], 0.98),
        Err(JudgeError::EmptySample("experiment"))
    );
    assert_eq!(
        mann_whitney(&[1.0], &[f64::NAN], 0.98),
        Err(JudgeError::NotFinite("control"))
    );
    assert_eq!(
        mann_whitney(&[1.0], &[1.0], 1.0),
        Err(JudgeError::BadConfidence(1.0))
    );
}

fn latency(direction: Direction) -> MetricConfig {
    MetricConfig {
        direction,
        ..MetricConfig::new("latency")
    }
}

fn shifted(n: usize, base: f64, shift: f64) -> Vec<f64> {
    (0..n)
        .map(|i| base + shift + ((i * 7) % 10) as f64 * 0.1)
        .collect()
}

#[test]
fn classifies_by_direction() {
    let jc = JudgeConfig::default();
    let c = shifted(30, 10.0, 0.0);
    let high = shifted(30, 10.0, 5.0);
    let low = shifted(30, 10.0, -5.0);
    let cases = [
        (Direction::Increase, &high, Classification::High),
        (Direction::Increase, &low, Classification::Pass),
        (Direction::Decrease, &low, Classification::Low),
        (Direction::Decrease, &high, Classification::Pass),
        (Direction::Either, &high, Classification::High),
        (Direction::Either, &low, Classification::Low),
        (Direction::Either, &c, Classification::Pass),
    ];
    for (dir, e, want) in cases {
        let r = judge_metric(&latency(dir), &c, e, &jc).unwrap();
        assert_eq!(r.classification, want, "{dir}: {}", r.reason);
    }
}

#[test]
fn allowed_increase_and_cles() {
    let jc = JudgeConfig::default();
    let c = shifted(30, 10.0, 0.0);
    let e = shifted(30, 10.0, 1.0); // mean ratio about 1.095
    let mut m = latency(Direction::Increase);
    assert_eq!(
        judge_metric(&m, &c, &e, &jc).unwrap().classification,
        Classification::High
    );
    m.allowed_increase = Some(1.2);
    assert_eq!(
        judge_metric(&m, &c, &e, &jc).unwrap().classification,
        Classification::Pass
    );
    m.effect = EffectMeasure::Cles;
    m.allowed_increase = None;
    let r = judge_metric(&m, &c, &e, &jc).unwrap();
    assert!(r.effect_size.unwrap() > 0.8, "{r:?}");
    assert_eq!(r.classification, Classification::High);
}

#[test]
fn nan_strategies_outliers_and_nodata() {
    assert_eq!(
        clean(&[1.0, f64::NAN, 2.0], NanStrategy::Remove, None),
        vec![1.0, 2.0]
    );
    assert_eq!(
        clean(&[1.0, f64::NAN], NanStrategy::Replace(0.0), None),
        vec![1.0, 0.0]
    );
    assert_eq!(
        clean(&[1.0, 2.0, 2.0, 3.0, 100.0], NanStrategy::Remove, Some(1.5)),
        vec![1.0, 2.0, 2.0, 3.0]
    );
    let jc = JudgeConfig::default();
    let r = judge_metric(&latency(Direction::Increase), &[f64::NAN], &[1.0], &jc).unwrap();
    assert_eq!(r.classification, Classification::Nodata);
    let j = judge(&[latency(Direction::Increase)], &[], &jc).unwrap();
    assert_eq!(j.outcome, Outcome::Nodata);
}

#[test]
fn group_weights_and_critical() {
    let c = shifted(30, 10.0, 0.0);
    let bad = shifted(30, 10.0, 5.0);
    let mut errors = MetricConfig {
        group: "errors".into(),
        ..MetricConfig::new("errors")
    };
    let lat_a = MetricConfig {
        group: "latency".into(),
        ..MetricConfig::new("p50")
    };
    let lat_b = MetricConfig {
        group: "latency".into(),
        ..MetricConfig::new("p99")
    };
    let jc = JudgeConfig {
        group_weights: vec![("errors".into(), 3.0), ("latency".into(), 1.0)],
        ..JudgeConfig::default()
    };
    let samples = vec![
        ("errors".to_string(), c.clone(), c.clone()),
        ("p50".to_string(), c.clone(), c.clone()),
        ("p99".to_string(), c.clone(), bad.clone()),
    ];
    let metrics = vec![errors.clone(), lat_a.clone(), lat_b.clone()];
    let j = judge(&metrics, &samples, &jc).unwrap();
    // errors: 1/1 with weight 3; latency: 1/2 with weight 1 → (3 + 0.5)/4 = 87.5.
    assert!((j.score - 87.5).abs() < 1e-9, "{}", j.score);
    assert_eq!(j.outcome, Outcome::Marginal);
    // A critical metric that fails zeroes the score.
    errors.critical = true;
    errors.critical_increase = Some(1.2);
    let samples = vec![
        ("errors".to_string(), c.clone(), bad.clone()),
        ("p50".to_string(), c.clone(), c.clone()),
        ("p99".to_string(), c.clone(), c.clone()),
    ];
    let j = judge(
        &[errors.clone(), lat_a.clone(), lat_b.clone()],
        &samples,
        &jc,
    )
    .unwrap();
    assert_eq!((j.score, j.outcome), (0.0, Outcome::Fail));
    assert!(j.metrics[0].critical_failure);
    // Below its critical limit it only counts as a failed metric.
    errors.critical_increase = Some(2.0);
    let j = judge(&[errors, lat_a, lat_b], &samples, &jc).unwrap();
    assert!((j.score - 25.0).abs() < 1e-9, "{}", j.score);
    assert!(judge(&[], &[("x".into(), vec![], vec![])], &jc).is_err());
}

/// Issue 9: a NaN limit switched the comparison it belongs to off, and a regression passed.
#[test]
fn non_finite_settings_are_refused() {
    let c: Vec<f64> = (0..30).map(|i| 100.0 + f64::from(i % 7)).collect();
    let e: Vec<f64> = c.iter().map(|v| v * 1.6).collect();
    let samples = [("m".to_string(), c, e)];
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let metrics = [
            MetricConfig {
                allowed_increase: Some(bad),
                ..MetricConfig::new("m")
            },
            MetricConfig {
                allowed_decrease: Some(bad),
                ..MetricConfig::new("m")
            },
            MetricConfig {
                critical_increase: Some(bad),
                ..MetricConfig::new("m")
            },
            MetricConfig {
                critical_decrease: Some(bad),
                ..MetricConfig::new("m")
            },
            MetricConfig {
                iqr_outlier_factor: Some(bad),
                ..MetricConfig::new("m")
            },
            MetricConfig {
                nan_strategy: NanStrategy::Replace(bad),
                ..MetricConfig::new("m")
            },
        ];
        for m in metrics {
            let err =
                judge(std::slice::from_ref(&m), &samples, &JudgeConfig::default()).unwrap_err();
            assert!(
                matches!(err, JudgeError::BadSetting { ref setting, .. } if setting.starts_with("metric `m`")),
                "{m:?}: {err}"
            );
        }
        let m = [MetricConfig::new("m")];
        for jc in [
            JudgeConfig {
                confidence: bad,
                ..JudgeConfig::default()
            },
            JudgeConfig {
                tolerance: bad,
                ..JudgeConfig::default()
            },
            JudgeConfig {
                pass: bad,
                ..JudgeConfig::default()
            },
            JudgeConfig {
                marginal: bad,
                ..JudgeConfig::default()
            },
            JudgeConfig {
                group_weights: vec![("default".into(), bad)],
                ..JudgeConfig::default()
            },
        ] {
            assert!(judge(&m, &samples, &jc).is_err(), "{jc:?}");
        }
    }
    assert_eq!(
        judge(
            &[MetricConfig {
                allowed_increase: Some(f64::NAN),
                ..MetricConfig::new("m")
            }],
            &samples,
            &JudgeConfig::default()
        )
        .unwrap_err()
        .to_string(),
        "metric `m`: allowed_increase is NaN; it must be a finite number"
    );
}

/// Issue 9: −1e308 against +1e308 overflowed the shift to ∞ and the mean ratio to NaN, and the
/// canary passed.
#[test]
fn overflowing_comparisons_never_pass() {
    let low = vec![-1e308; 40];
    let high = vec![1e308; 40];
    for (direction, c, e) in [
        (Direction::Increase, &low, &high),
        (Direction::Decrease, &high, &low),
        (Direction::Either, &low, &high),
        (Direction::Either, &high, &low),
    ] {
        let m = MetricConfig {
            direction,
            critical: true,
            ..MetricConfig::new("m")
        };
        let j = judge(
            &[m],
            &[("m".into(), c.clone(), e.clone())],
            &JudgeConfig::default(),
        )
        .unwrap();
        assert_eq!(j.outcome, Outcome::Fail, "{direction:?}: {j:?}");
        assert!(j.metrics[0].critical_failure, "{j:?}");
        assert!(j.metrics[0].reason.contains("not a finite number"), "{j:?}");
    }
    // Means of values near the top of the range no longer overflow: the ratio is computed.
    let c: Vec<f64> = (0..40).map(|i| 1.0e308 + f64::from(i) * 1e292).collect();
    let e: Vec<f64> = (0..40).map(|i| 1.7e308 + f64::from(i) * 1e292).collect();
    assert!((effect_size(EffectMeasure::MeanRatio, &e, &c) - 1.7).abs() < 1e-9);
    let j = judge(
        &[MetricConfig::new("m")],
        &[("m".into(), c, e)],
        &JudgeConfig::default(),
    )
    .unwrap();
    assert_eq!(j.metrics[0].classification, Classification::High, "{j:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn symmetric(x in proptest::collection::vec(-1e3f64..1e3, 1..25), y in proptest::collection::vec(-1e3f64..1e3, 1..25)) {
        let a = mann_whitney(&x, &y, 0.98).unwrap();
        let b = mann_whitney(&y, &x, 0.98).unwrap();
        let tol = 1e-9 * (1.0 + a.estimate.abs() + a.upper.abs() + a.lower.abs());
        prop_assert!((a.p_value - b.p_value).abs() < 1e-9);
        prop_assert!((a.estimate + b.estimate).abs() < tol + 1e-6);
        prop_assert!((a.lower + b.upper).abs() < tol + 1e-6);
        prop_assert!((a.upper + b.lower).abs() < tol + 1e-6);
        prop_assert!(a.lower <= a.estimate + tol && a.estimate <= a.upper + tol);
    }

    #[test]
    fn scale_invariant(x in proptest::collection::vec(-1e3f64..1e3, 1..25), y in proptest::collection::vec(-1e3f64..1e3, 1..25), k in 0.01f64..100.0) {
        let a = mann_whitney(&x, &y, 0.98).unwrap();
        let xs: Vec<f64> = x.iter().map(|v| v * k).collect();
        let ys: Vec<f64> = y.iter().map(|v| v * k).collect();
        let b = mann_whitney(&xs, &ys, 0.98).unwrap();
        let tol = 1e-6 * (1.0 + b.estimate.abs() + (b.upper - b.lower).abs());
        prop_assert!((a.p_value - b.p_value).abs() < 1e-9);
        prop_assert!((a.estimate * k - b.estimate).abs() < tol);
        prop_assert!((a.lower * k - b.lower).abs() < tol);
        prop_assert!((a.upper * k - b.upper).abs() < tol);
    }

    #[test]
    fn order_invariant(x in proptest::collection::vec(-1e3f64..1e3, 1..25), y in proptest::collection::vec(-1e3f64..1e3, 1..25)) {
        let a = mann_whitney(&x, &y, 0.98).unwrap();
        let mut xr = x.clone();
        xr.reverse();
        let mut ys = y.clone();
        ys.sort_by(f64::total_cmp);
        let b = mann_whitney(&xr, &ys, 0.98).unwrap();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn never_panics(
        c in proptest::collection::vec(prop_oneof![any::<f64>(), Just(f64::NAN), Just(0.0)], 0..20),
        e in proptest::collection::vec(prop_oneof![any::<f64>(), Just(f64::NAN), Just(0.0)], 0..20),
        replace in any::<bool>(),
        iqr in proptest::option::of(0.0f64..5.0),
        cles in any::<bool>(),
    ) {
        let m = MetricConfig {
            nan_strategy: if replace { NanStrategy::Replace(0.0) } else { NanStrategy::Remove },
            iqr_outlier_factor: iqr,
            effect: if cles { EffectMeasure::Cles } else { EffectMeasure::MeanRatio },
            direction: Direction::Either,
            ..MetricConfig::new("m")
        };
        let j = judge(&[m], &[("m".into(), c, e)], &JudgeConfig::default()).unwrap();
        prop_assert!((0.0..=100.0).contains(&j.score));
        // A metric only passes on figures that are numbers.
        for r in j.metrics.iter().filter(|r| r.classification == Classification::Pass) {
            let t = r.test.unwrap();
            prop_assert!(t.estimate.is_finite() && t.lower.is_finite() && t.upper.is_finite());
            prop_assert!(!r.effect_size.unwrap().is_nan());
        }
    }
}
