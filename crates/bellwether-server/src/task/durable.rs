//! The one rule for every engine the server drives: step a **copy** of the engine's state,
//! save the copy with the step's effects, and make it the current state only once the save has
//! committed.
//!
//! A state changed first and saved after would, on a failed save, keep dispatches and events
//! the store never got (the engine would count actions as pending that no agent will ever
//! see). Here a failed save leaves the current state as it was; the step is simply not taken,
//! and the engine takes it again from the same inputs (a result stays unobserved in the store,
//! the next tick comes, an operator's command is answered with the error). A save is retried
//! with a capped exponential backoff a bounded number of times; when it still fails the caller
//! holds the task (see `task::Runner::hold`).

use std::future::Future;
use std::time::Duration;

/// How often and how patiently a step's save is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SavePolicy {
    /// The wait before the second attempt; each further wait doubles, up to `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
}

impl Default for SavePolicy {
    /// Six attempts over about three seconds: long enough to ride out a busy database or a
    /// checkpoint, short enough that an operator's command is not left hanging.
    fn default() -> Self {
        SavePolicy {
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            attempts: 6,
        }
    }
}

/// A step whose save failed on every attempt; the engine's state was left unchanged.
#[derive(Debug)]
pub(crate) struct Unsaved<E> {
    pub error: E,
    pub attempts: u32,
}

/// Steps a copy of `current` with `step`, builds the record of the step with `record`, and
/// saves it with `save` (retried per `policy`; `save` takes the record and hands it back with
/// its answer, so its future owns what it reads). Only once a save has committed is the copy
/// swapped into `current`; the step's output and record are returned. On failure `current`
/// is untouched.
pub(crate) async fn commit<S, D, R, E, Fut>(
    current: &mut S,
    policy: SavePolicy,
    step: impl FnOnce(&mut S) -> D,
    record: impl FnOnce(&S, &D) -> R,
    mut save: impl FnMut(R) -> Fut,
) -> Result<(D, R), Unsaved<E>>
where
    S: Clone,
    E: std::fmt::Display,
    Fut: Future<Output = (R, Result<(), E>)>,
{
    let mut next = current.clone();
    let out = step(&mut next);
    let mut rec = record(&next, &out);
    let mut delay = policy.first_delay;
    let mut attempt = 1;
    loop {
        let (back, saved) = save(rec).await;
        rec = back;
        match saved {
            Ok(()) => {
                *current = next;
                return Ok((out, rec));
            }
            Err(error) if attempt >= policy.attempts.max(1) => {
                return Err(Unsaved {
                    error,
                    attempts: attempt,
                })
            }
            Err(error) => {
                tracing::warn!(attempt, error = %error, retry_in_ms = delay.as_millis() as u64, "Could not save an engine step; retrying.");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(policy.max_delay);
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// On tokio's paused clock: the default policy's waits (100, 200, 400, 800, 1600 ms) are
    /// measured, not slept.
    #[tokio::test(start_paused = true)]
    async fn a_failed_save_leaves_the_state_unchanged_after_bounded_retries() {
        let mut state = vec![1];
        let calls = Cell::new(0);
        let started = tokio::time::Instant::now();
        let r = commit(
            &mut state,
            SavePolicy::default(),
            |s| {
                s.push(2);
                "dispatched"
            },
            |s, d| format!("{s:?} {d}"),
            |rec: String| {
                calls.set(calls.get() + 1);
                async move { (rec, Err::<(), _>("disk full")) }
            },
        )
        .await;
        let e = r.unwrap_err();
        assert_eq!((e.error, e.attempts), ("disk full", 6));
        assert_eq!(calls.get(), 6);
        assert_eq!(state, vec![1], "the step was not kept");
        assert_eq!(started.elapsed(), Duration::from_millis(3100));
    }

    #[tokio::test(start_paused = true)]
    async fn the_copy_is_swapped_in_once_a_retry_commits() {
        let mut state = vec![1];
        let calls = Cell::new(0);
        let started = tokio::time::Instant::now();
        let (out, rec) = commit(
            &mut state,
            SavePolicy {
                max_delay: Duration::from_millis(150),
                ..SavePolicy::default()
            },
            |s| {
                s.push(2);
                7
            },
            |s, d| format!("{s:?} {d}"),
            |rec: String| {
                calls.set(calls.get() + 1);
                let saved = if calls.get() < 3 { Err("busy") } else { Ok(()) };
                async move { (rec, saved) }
            },
        )
        .await
        .unwrap();
        assert_eq!((out, rec.as_str()), (7, "[1, 2] 7"));
        assert_eq!(state, vec![1, 2]);
        assert_eq!(calls.get(), 3);
        // 100 ms, then the doubled wait capped at 150 ms.
        assert_eq!(started.elapsed(), Duration::from_millis(250));
    }
}
