//! The seeded generator of training and the synthetic histories: the one of
//! [`bellwether_model::rng`], so that both are reproducible from a seed without depending on
//! another crate's stream stability.

pub use bellwether_model::rng::SplitMix64 as Rng;

/// The generator for `seed`. Predict's streams have always started from the seed xor the
/// SplitMix64 gamma; keeping that keeps every seeded model, split and synthetic world (and
/// the figures in BENCHMARKS.md) what it was.
pub fn seeded(seed: u64) -> Rng {
    Rng::new(seed ^ bellwether_model::rng::GAMMA)
}
