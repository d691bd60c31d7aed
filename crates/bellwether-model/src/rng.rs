//! The one seeded generator of Bellwether: SplitMix64 (Steele, Lea and Flood, 2014), with the
//! uniform, normal and shuffle helpers that the synthetic fleets, the synthetic metric streams
//! and model training need.
//!
//! Why a generator of our own: a seed must give the same synthetic host, the same training
//! split and the same benchmark figure on every platform and with every version of every
//! dependency, which a third-party crate's stream does not promise. SplitMix64 is eight lines,
//! passes BigCrush, and has no state beyond one `u64`.
//!
//! The rule: this module is for *reproducible* randomness only (synthetic data, sampling in
//! training, simulated noise). Anything that must be unpredictable — tokens, secrets, retry
//! jitter — draws from the operating system through the `rand` crate (`OsRng`,
//! `thread_rng`), never from here. This module does no IO and never panics.

/// SplitMix64: a 64-bit state advanced by the golden-ratio gamma and mixed by two multiply-
/// xorshift rounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64(u64);

/// The increment of SplitMix64 (2^64 divided by the golden ratio, odd).
pub const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

impl SplitMix64 {
    /// A generator whose first output is the mix of `seed + GAMMA`.
    pub const fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), with 53 bits of precision.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` by the remainder of 64 bits (the bias is below `n / 2^64`); `n = 0`
    /// is taken as 1, so the answer is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// An index in `0..len` by scaling a [`unit`](Self::unit) draw; `len = 0` gives 0. This
    /// is a different stream from [`below`](Self::below) for the same state: training in
    /// `bellwether-predict` has always drawn indices this way, and its seeded results stay
    /// the same.
    pub fn index(&mut self, len: usize) -> usize {
        let len = len.max(1);
        (self.unit() * len as f64) as usize % len
    }

    /// A standard normal deviate (Box–Muller, one of the pair; two draws per call).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(1e-300);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// One element of the non-empty array `items`, uniformly by [`below`](Self::below). An
    /// empty array does not compile.
    pub fn pick<'a, T, const N: usize>(&mut self, items: &'a [T; N]) -> &'a T {
        const { assert!(N > 0, "pick needs a non-empty array") };
        &items[self.below(N as u64) as usize]
    }

    /// Shuffles `v` in place (Fisher–Yates, indices by [`index`](Self::index)).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.index(i + 1);
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The reference outputs of SplitMix64 for seed 1234567, from the authors' C code (also
    /// the test vector of Rust's `rand_xoshiro::SplitMix64`).
    #[test]
    fn matches_the_reference_stream() {
        let mut r = SplitMix64::new(1_234_567);
        let got: Vec<u64> = (0..5).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423,
                4_593_380_528_125_082_431,
                16_408_922_859_458_223_821,
            ]
        );
    }

    #[test]
    fn normal_has_unit_moments() {
        let mut r = SplitMix64::new(42);
        let xs: Vec<f64> = (0..20_000).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }

    #[test]
    fn pick_and_shuffle_cover_their_input() {
        let mut r = SplitMix64::new(7);
        let mut seen = [false; 4];
        for _ in 0..200 {
            seen[*r.pick(&[0usize, 1, 2, 3])] = true;
        }
        assert_eq!(seen, [true; 4]);
        let mut v: Vec<u32> = (0..50).collect();
        r.shuffle(&mut v);
        assert_ne!(v, (0..50).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..50).collect::<Vec<_>>());
    }

    proptest! {
        #[test]
        fn draws_stay_in_range(seed: u64, n: u64, len: usize) {
            let mut r = SplitMix64::new(seed);
            let u = r.unit();
            prop_assert!((0.0..1.0).contains(&u));
            prop_assert!(r.below(n) < n.max(1));
            prop_assert!(r.index(len) < len.max(1));
            prop_assert!(r.normal().is_finite());
        }

        #[test]
        fn a_seed_gives_one_stream(seed: u64) {
            let (mut a, mut b) = (SplitMix64::new(seed), SplitMix64::new(seed));
            for _ in 0..8 {
                prop_assert_eq!(a.next_u64(), b.next_u64());
            }
        }
    }
}
