//! The bounded sample queue the agent keeps while the server is away.
//!
//! The buffer never grows past its capacity: when it is full, the oldest sample goes, and the
//! drop is counted so that the next successful send can tell the server how much it missed.
//! Nothing here does IO; the send loop decides when to drain it.

use std::collections::VecDeque;
use std::num::NonZeroUsize;

use bellwether_model::MetricSample;

/// A FIFO of metric samples with a hard capacity and a count of what it had to drop.
#[derive(Debug)]
pub struct SampleBuffer {
    queue: VecDeque<MetricSample>,
    capacity: NonZeroUsize,
    /// Samples dropped since the server last acknowledged a `dropped` count.
    unreported_dropped: u64,
    /// Samples dropped over the agent's whole life, for logs.
    total_dropped: u64,
}

impl SampleBuffer {
    pub fn new(capacity: NonZeroUsize) -> Self {
        SampleBuffer {
            // Start small: an agent whose server is up never holds more than one interval's
            // samples, and the idle memory goal is tight.
            queue: VecDeque::with_capacity(capacity.get().min(64)),
            capacity,
            unreported_dropped: 0,
            total_dropped: 0,
        }
    }

    /// Appends a sample, dropping the oldest one when the buffer is full.
    /// Returns how many samples were dropped to make room (0 or 1).
    pub fn push(&mut self, sample: MetricSample) -> u64 {
        let mut dropped = 0;
        if self.queue.len() == self.capacity.get() {
            self.queue.pop_front();
            dropped = 1;
            self.unreported_dropped += 1;
            self.total_dropped += 1;
        }
        self.queue.push_back(sample);
        dropped
    }

    /// Appends every sample; returns how many older samples were dropped to make room.
    pub fn extend(&mut self, samples: impl IntoIterator<Item = MetricSample>) -> u64 {
        samples.into_iter().map(|s| self.push(s)).sum()
    }

    /// The oldest `max` samples, in order, without removing them: a send removes them with
    /// [`SampleBuffer::commit`] only once the server has accepted them.
    pub fn peek_batch(&self, max: usize) -> Vec<MetricSample> {
        self.queue.iter().take(max).cloned().collect()
    }

    /// Records that the server accepted the oldest `sent` samples and a `dropped` count of
    /// `reported_dropped`.
    pub fn commit(&mut self, sent: usize, reported_dropped: u64) {
        let sent = sent.min(self.queue.len());
        self.queue.drain(..sent);
        self.unreported_dropped = self.unreported_dropped.saturating_sub(reported_dropped);
        if self.queue.is_empty() && self.queue.capacity() > 1024 {
            // Give back the memory an outage made us take.
            self.queue.shrink_to(64);
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity.get()
    }

    /// Dropped samples the server has not been told about yet.
    pub fn unreported_dropped(&self) -> u64 {
        self.unreported_dropped
    }

    pub fn total_dropped(&self) -> u64 {
        self.total_dropped
    }

    /// True when there is something to tell the server: samples, or a drop count.
    pub fn has_pending(&self) -> bool {
        !self.queue.is_empty() || self.unreported_dropped > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(i: i64) -> MetricSample {
        MetricSample {
            ts_ms: i,
            name: "load1".into(),
            value: i as f64,
        }
    }

    fn buf(cap: usize) -> SampleBuffer {
        SampleBuffer::new(NonZeroUsize::new(cap).unwrap())
    }

    #[test]
    fn drops_oldest_when_full_and_counts_it() {
        let mut b = buf(3);
        assert_eq!(b.extend((0..5).map(sample)), 2);
        assert_eq!(b.len(), 3);
        assert_eq!(b.unreported_dropped(), 2);
        let ts: Vec<i64> = b.peek_batch(10).iter().map(|s| s.ts_ms).collect();
        assert_eq!(ts, vec![2, 3, 4]);
    }

    #[test]
    fn commit_removes_only_what_was_sent_and_reported() {
        let mut b = buf(3);
        b.extend((0..5).map(sample));
        let batch = b.peek_batch(2);
        let reported = b.unreported_dropped();
        // One more drop happens between the peek and the acknowledgement.
        b.extend([sample(5)]);
        b.commit(batch.len(), reported);
        assert_eq!(b.unreported_dropped(), 1);
        assert_eq!(b.total_dropped(), 3);
        let ts: Vec<i64> = b.peek_batch(10).iter().map(|s| s.ts_ms).collect();
        assert_eq!(ts, vec![5]);
    }

    #[test]
    fn pending_includes_an_unreported_drop_count() {
        let mut b = buf(1);
        b.extend([sample(0), sample(1)]);
        b.commit(1, 0);
        assert!(b.is_empty());
        assert!(b.has_pending());
        b.commit(0, 1);
        assert!(!b.has_pending());
    }

    proptest! {
        /// Whatever is pushed, the buffer holds at most its capacity, keeps the newest samples
        /// in order, and accounts for every sample as held or dropped.
        #[test]
        fn bounded_and_conserving(cap in 1usize..50, n in 0i64..300) {
            let mut b = buf(cap);
            let dropped = b.extend((0..n).map(sample));
            prop_assert!(b.len() <= cap);
            prop_assert_eq!(b.len() as u64 + dropped, n as u64);
            prop_assert_eq!(b.unreported_dropped(), dropped);
            let ts: Vec<i64> = b.peek_batch(usize::MAX).iter().map(|s| s.ts_ms).collect();
            let expected: Vec<i64> = ((n - b.len() as i64)..n).collect();
            prop_assert_eq!(ts, expected);
        }
    }
}
