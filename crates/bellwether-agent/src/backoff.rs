//! Capped exponential backoff with jitter, for reconnecting to the server.
//!
//! The n-th consecutive failure waits `min(cap, base · 2ⁿ)` scaled by a random factor in
//! [½, 1] ("equal jitter"), so a fleet of agents that lost the server at the same moment does
//! not come back in lockstep, and no agent ever waits longer than the cap. A success resets the
//! schedule. The random source is injected so tests can fix it.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The wait after the first failure, before jitter.
    pub base: Duration,
    /// No wait is ever longer than this.
    pub cap: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            base: Duration::from_millis(250),
            cap: Duration::from_secs(30),
        }
    }
}

impl BackoffPolicy {
    /// The un-jittered ceiling for the `failures`-th consecutive failure (1-based).
    pub fn ceiling(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(32);
        let factor = 1u64 << exp;
        let nanos = (self.base.as_nanos() as u64).saturating_mul(factor);
        Duration::from_nanos(nanos)
            .min(self.cap)
            .max(Duration::from_millis(1))
    }
}

#[derive(Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    failures: u32,
    rng: SmallRng,
}

impl Backoff {
    pub fn new(policy: BackoffPolicy) -> Self {
        Backoff {
            policy,
            failures: 0,
            rng: SmallRng::from_entropy(),
        }
    }

    /// A backoff whose jitter is reproducible, for tests.
    pub fn with_seed(policy: BackoffPolicy, seed: u64) -> Self {
        Backoff {
            policy,
            failures: 0,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let ceiling = self.policy.ceiling(self.failures);
        let half = ceiling / 2;
        let jitter = self.rng.gen_range(0..=half.as_nanos() as u64);
        half + Duration::from_nanos(jitter)
    }

    /// Records a success: the next failure starts the schedule over.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> BackoffPolicy {
        BackoffPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        }
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let p = policy();
        let ms: Vec<u128> = (1..=7).map(|n| p.ceiling(n).as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::with_seed(policy(), 7);
        for _ in 0..10 {
            b.next_delay();
        }
        b.reset();
        assert_eq!(b.failures(), 0);
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_agents_apart() {
        // Agents with different seeds should not all pick the same wait.
        let delays: std::collections::BTreeSet<Duration> = (0..20)
            .map(|seed| {
                let mut b = Backoff::with_seed(policy(), seed);
                b.next_delay();
                b.next_delay()
            })
            .collect();
        assert!(delays.len() > 10, "only {} distinct delays", delays.len());
    }

    proptest! {
        /// Every delay lies in [ceiling/2, ceiling] and never exceeds the cap.
        #[test]
        fn delays_within_jitter_band(seed in any::<u64>(), n in 1u32..100) {
            let p = policy();
            let mut b = Backoff::with_seed(p, seed);
            for i in 1..=n {
                let d = b.next_delay();
                let c = p.ceiling(i);
                prop_assert!(d >= c / 2 && d <= c, "failure {i}: {d:?} outside [{:?}, {c:?}]", c / 2);
                prop_assert!(d <= p.cap);
            }
        }
    }
}
