//! Thread CPU time of training on synthetic world 1 (100,000 rows, as `bellwether bench model`)
//! without building the CLI:
//!
//!     cargo run --release -p bellwether-predict --example train_speed
//!
//! Prints training CPU time and prediction rows/s per core. Variables: ROWS, REPS, FOLDS, LR,
//! SUB, ESR, DEPTH, LEAVES. Linux only (/proc/thread-self/schedstat).
use bellwether_predict::synth::{Shape, World};
use bellwether_predict::{GbdtParams, Model, TrainOptions};

fn cpu() -> f64 {
    let t = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    t.split_whitespace().next().unwrap().parse::<f64>().unwrap() / 1e9
}
fn env<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn main() {
    let rows: usize = env("ROWS", 100_000);
    let frame = World::new(1, &Shape::default()).sample(rows, 1, 0.0).frame;
    let folds: usize = env("FOLDS", bellwether_predict::model::FOLDS);
    let d = GbdtParams::for_folds(folds);
    let gbdt = GbdtParams {
        learning_rate: env("LR", d.learning_rate),
        subsample: env("SUB", d.subsample),
        early_stopping_rounds: env("ESR", d.early_stopping_rounds),
        max_depth: env("DEPTH", d.max_depth),
        max_leaves: env("LEAVES", d.max_leaves),
        ..d
    };
    let opts = TrainOptions {
        gbdt,
        folds,
        ..TrainOptions::default()
    };
    for _ in 0..env("REPS", 2) {
        let t = cpu();
        let m = Model::train(&frame, &opts).unwrap();
        let train = cpu() - t;
        // Prediction as `bellwether bench model` measures it: probabilities of every row of
        // the in-memory frame, five passes, one thread.
        let t = cpu();
        let mut sum = 0.0;
        for _ in 0..5 {
            sum += m.probabilities(&frame).unwrap().0.iter().sum::<f64>();
        }
        let predict = cpu() - t;
        println!(
            "train cpu {train:.2} s, trees {:?}, predict {:.0} rows/s (cpu; mean p {:.4})",
            m.summary().gbdt.as_ref().map(|g| g.best_rounds),
            (5 * rows) as f64 / predict,
            sum / (5 * rows) as f64
        );
    }
}
