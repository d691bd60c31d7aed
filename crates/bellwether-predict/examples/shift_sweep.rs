//! The shift worlds of `bellwether bench model --quality` on any seeds, with the training
//! options from the environment, for choosing defaults on seeds other than the bench's 1–10:
//!
//!     cargo run --release -p bellwether-predict --example shift_sweep            # seeds 101–110
//!     LO=201 HI=210 FOLDS=1 cargo run --release -p bellwether-predict --example shift_sweep
//!
//! Per world: Brier ratio to `_p` on all test rows, on the rows with new categories and on a
//! sample without them; `xs`/`xc` are the model's mean squared distance to `_p` over `_p`'s
//! Brier score (the ratio minus one without the outcomes' noise) on those samples. Variables:
//! LO, HI, FOLDS, HOLD, LR, DEPTH, LEAVES, MSL, MCW, L2, SUB, COL, CATS, ESR (the tree parameters
//! default to those that go with FOLDS, `GbdtParams::for_folds`). With HIST=DIR it
//! instead trains on DIR/train.csv and scores DIR/test.csv (the deploy history of issue 4).
use bellwether_predict::synth::{Shape, World};
use bellwether_predict::{GbdtParams, Model, TrainOptions};
use std::time::Instant;

fn env<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn main() {
    let shape = Shape {
        numeric: 8,
        categorical: 3,
        missing_rate: 0.20,
        base_rate: 0.15,
    };
    let lo: u64 = env("LO", 101);
    let hi: u64 = env("HI", 110);
    let folds: usize = env("FOLDS", bellwether_predict::model::FOLDS);
    let d = GbdtParams::for_folds(folds);
    let gbdt = GbdtParams {
        learning_rate: env("LR", d.learning_rate),
        max_depth: env("DEPTH", d.max_depth),
        max_leaves: env("LEAVES", d.max_leaves),
        min_samples_leaf: env("MSL", d.min_samples_leaf),
        min_child_weight: env("MCW", d.min_child_weight),
        l2: env("L2", d.l2),
        subsample: env("SUB", d.subsample),
        colsample: env("COL", d.colsample),
        cat_smooth: env("CATS", d.cat_smooth),
        early_stopping_rounds: env("ESR", d.early_stopping_rounds),
        ..d
    };
    let opts = TrainOptions {
        gbdt,
        folds,
        holdout: env("HOLD", 0.2),
        ..TrainOptions::default()
    };
    if let Ok(dir) = std::env::var("HIST") {
        let read = |name: &str| {
            let path = std::path::Path::new(&dir).join(name);
            let file =
                std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            bellwether_predict::Frame::from_csv(file, &path.display().to_string()).unwrap()
        };
        let m = Model::train(&read("train.csv"), &opts).unwrap();
        let e = m.evaluate(&read("test.csv")).unwrap();
        println!(
            "HIST {:?} brier ratio {:.4} auc ratio {:.4} ece {:.4} trees {:?}",
            m.method(),
            e.brier_ratio.unwrap_or(f64::NAN),
            e.auc_ratio.unwrap_or(f64::NAN),
            e.model.calibration_error,
            m.summary().gbdt.as_ref().map(|g| g.best_rounds)
        );
        return;
    }
    let (mut xs, mut xcs) = (vec![], vec![]);
    let (mut sa, mut su, mut sc, mut sauc, mut se, mut st) =
        (vec![], vec![], vec![], vec![], vec![], 0.0);
    for w in lo..=hi {
        let world = World::new(w, &shape);
        let train = world.sample(20_000, 100 + w, 0.0);
        let shift = world.sample(5_000, 200 + w, 0.10);
        let clean = world.sample(5_000, 300 + w, 0.0);
        let t = Instant::now();
        let m = Model::train(&train.frame, &opts).unwrap();
        let dt = t.elapsed().as_secs_f64();
        st += dt;
        let e = m.evaluate(&shift.frame).unwrap();
        let c = m.evaluate(&clean.frame).unwrap();
        let excess = |smp: &bellwether_predict::synth::Sample| {
            let (probs, _) = m.probabilities(&smp.frame).unwrap();
            let mse: f64 = probs
                .iter()
                .zip(&smp.p)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>();
            let bo: f64 = smp
                .p
                .iter()
                .zip(&smp.failed)
                .map(|(a, &y)| (a - if y { 1.0 } else { 0.0 }).powi(2))
                .sum::<f64>();
            mse / bo
        };
        let (xa, xc) = (excess(&shift), excess(&clean));
        xs.push(xa);
        xcs.push(xc);
        let u = e
            .unseen_split
            .as_ref()
            .and_then(|s| s.unseen.as_ref())
            .and_then(|u| u.brier_ratio)
            .unwrap();
        println!(
            "w{w:<4} {:?} all {:.4} new {:.4} clean {:.4} xs {xa:.4} xc {xc:.4} auc {:.4} ece {:.4} rounds {:?} t {dt:.2}",
            m.method(), e.brier_ratio.unwrap(), u, c.brier_ratio.unwrap(), e.auc_ratio.unwrap(), e.model.calibration_error,
            m.summary().gbdt.as_ref().map(|g| g.best_rounds)
        );
        sa.push(e.brier_ratio.unwrap());
        su.push(u);
        sc.push(c.brier_ratio.unwrap());
        sauc.push(e.auc_ratio.unwrap());
        se.push(e.model.calibration_error);
    }
    let st_ = |v: &Vec<f64>| {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let max = v.iter().cloned().fold(f64::MIN, f64::max);
        let min = v.iter().cloned().fold(f64::MAX, f64::min);
        format!("mean {mean:.4} max {max:.4} min {min:.4}")
    };
    println!("ALL   {}", st_(&sa));
    println!("NEW   {}", st_(&su));
    println!("CLEAN {}", st_(&sc));
    println!("XS    {}", st_(&xs));
    println!("XC    {}", st_(&xcs));
    println!("AUC   {}", st_(&sauc));
    println!("ECE   {}", st_(&se));
    println!("TIME  {st:.2}");
}
