//! Thread CPU time of training on synthetic world 1 (100,000 rows, as `bellwether bench model`)
//! without building the CLI:
//!
//!     cargo run --release -p bellwether-predict --example train_speed
//!
//! Variables: ROWS, REPS, FOLDS, LR, SUB, ESR. Linux only (/proc/thread-self/schedstat).
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
    let d = GbdtParams::default();
    let gbdt = GbdtParams {
        learning_rate: env("LR", d.learning_rate),
        subsample: env("SUB", d.subsample),
        early_stopping_rounds: env("ESR", d.early_stopping_rounds),
        ..d
    };
    let opts = TrainOptions {
        gbdt,
        folds: env("FOLDS", 3),
        ..TrainOptions::default()
    };
    for _ in 0..env("REPS", 2) {
        let t = cpu();
        let m = Model::train(&frame, &opts).unwrap();
        println!(
            "train cpu {:.2} s, trees {:?}",
            cpu() - t,
            m.summary().gbdt.as_ref().map(|g| g.best_rounds)
        );
    }
}
