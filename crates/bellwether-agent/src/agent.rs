//! The agent's loop: collect every interval, send the profile when it changed, send samples,
//! back off while the server is away, buffer in the meantime, and stop on a shutdown signal.
//!
//! The loop is generic over its [`Collector`] and [`Transport`] so that its timing is tested on
//! tokio's paused clock with fakes. It runs nothing on the host: actions are the business of
//! [`crate::actions`], which borrows this loop's agent token through [`Agent::token_watch`].

use std::collections::BTreeMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::time::Duration;

use bellwether_model::{HostName, HostProfile, MetricSample};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::backoff::{Backoff, BackoffPolicy};
use crate::buffer::SampleBuffer;
use crate::change::ChangeDetector;
use crate::transport::{EnrolRequest, SamplesRequest, SendError, Transport};

/// One collection: the profile and the samples taken with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Collected {
    pub profile: HostProfile,
    pub samples: Vec<MetricSample>,
}

/// Where profiles and samples come from.
pub trait Collector {
    fn collect(&mut self) -> impl Future<Output = Collected>;
}

/// The validated settings of the loop.
#[derive(Debug, Clone)]
pub struct Settings {
    pub name: HostName,
    pub labels: BTreeMap<String, String>,
    /// The host's address, declared at enrolment (checked with
    /// `bellwether_model::wire::check_host_address`).
    pub address: Option<String>,
    /// How often to collect and send samples.
    pub interval: Duration,
    /// How many samples to hold while the server is away.
    pub buffer: NonZeroUsize,
    /// The most samples in one request.
    pub batch: NonZeroUsize,
    pub backoff: BackoffPolicy,
    /// How long a last send may take after the shutdown signal.
    pub shutdown_grace: Duration,
}

impl Settings {
    pub fn new(name: HostName) -> Self {
        Settings {
            name,
            labels: BTreeMap::new(),
            address: None,
            interval: Duration::from_secs(5),
            buffer: NonZeroUsize::new(10_000).expect("non-zero"),
            batch: NonZeroUsize::new(2_000).expect("non-zero"),
            backoff: BackoffPolicy::default(),
            shutdown_grace: Duration::from_secs(2),
        }
    }
}

/// What the agent did over its life, returned when it stops (and used by tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub collections: u64,
    pub enrolments: u64,
    pub profiles_sent: u64,
    pub samples_sent: u64,
    /// Dropped samples the server was told about.
    pub dropped_reported: u64,
    /// Dropped samples in all, told or not.
    pub dropped_total: u64,
    pub failed_attempts: u64,
    /// Samples still buffered at exit.
    pub buffered_at_exit: u64,
}

pub struct Agent<T, C> {
    settings: Settings,
    transport: T,
    collector: C,
    token: Option<String>,
    changes: ChangeDetector,
    latest_profile: Option<HostProfile>,
    pending_profile: Option<HostProfile>,
    buffer: SampleBuffer,
    backoff: Backoff,
    /// No send before this instant (set after a failure).
    retry_at: Option<Instant>,
    /// Whether this outage's first drop has been logged.
    drop_warned: bool,
    stats: Stats,
    /// Publishes the agent token to the action loop.
    token_tx: tokio::sync::watch::Sender<Option<String>>,
}

impl<T: Transport, C: Collector> Agent<T, C> {
    pub fn new(settings: Settings, transport: T, collector: C) -> Self {
        let backoff = Backoff::new(settings.backoff);
        Self::with_backoff(settings, transport, collector, backoff)
    }

    /// As [`Agent::new`], with a given backoff (a seeded one, in tests).
    pub fn with_backoff(settings: Settings, transport: T, collector: C, backoff: Backoff) -> Self {
        Agent {
            buffer: SampleBuffer::new(settings.buffer),
            settings,
            transport,
            collector,
            token: None,
            changes: ChangeDetector::default(),
            latest_profile: None,
            pending_profile: None,
            backoff,
            retry_at: None,
            drop_warned: false,
            stats: Stats::default(),
            token_tx: tokio::sync::watch::Sender::new(None),
        }
    }

    /// The agent token as this loop enrols and re-enrols, for the action loop.
    pub fn token_watch(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.token_tx.subscribe()
    }

    /// Runs until `shutdown` completes, then makes one last bounded attempt to send what is
    /// buffered, and returns what it did.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Stats {
        tokio::pin!(shutdown);
        let mut next_collect = Instant::now();
        loop {
            let wake = match self.retry_at {
                Some(at) if self.has_pending() => at.min(next_collect),
                _ => next_collect,
            };
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = self.step(wake, &mut next_collect) => {}
            }
        }
        info!(host = %self.settings.name, "Shutting down.");
        if self.has_pending() && self.retry_at.is_none_or(|at| at <= Instant::now()) {
            let grace = self.settings.shutdown_grace;
            if tokio::time::timeout(grace, self.flush()).await.is_err() {
                warn!(host = %self.settings.name, grace_ms = grace.as_millis() as u64,
                    "Last send did not finish within the grace period.");
            }
        }
        self.stats.dropped_total = self.buffer.total_dropped();
        self.stats.buffered_at_exit = self.buffer.len() as u64;
        self.stats
    }

    /// Sleeps until `wake`, then collects if it is time and sends if the backoff allows.
    /// Cancel-safe at its awaits: state changes only after a call returns.
    async fn step(&mut self, wake: Instant, next_collect: &mut Instant) {
        tokio::time::sleep_until(wake).await;
        let now = Instant::now();
        if now >= *next_collect {
            self.collect().await;
            *next_collect += self.settings.interval;
            if *next_collect <= now {
                // A slow collection or a suspended process: skip the missed ticks.
                *next_collect = now + self.settings.interval;
            }
        }
        let may_send = self.retry_at.is_none_or(|at| Instant::now() >= at);
        if may_send && self.has_pending() {
            match self.flush().await {
                Ok(()) => {
                    if self.backoff.failures() > 0 {
                        info!(host = %self.settings.name, failures = self.backoff.failures(),
                            "Reconnected to the server.");
                    }
                    self.backoff.reset();
                    self.retry_at = None;
                }
                Err(err) => {
                    let delay = self.backoff.next_delay();
                    self.retry_at = Some(Instant::now() + delay);
                    self.stats.failed_attempts += 1;
                    // 401: an unknown token; 403: a valid token of another role (an operator's,
                    // say) given where the enrolment token belongs.
                    let level_error = matches!(
                        err,
                        SendError::Unauthorized | SendError::Rejected { status: 403, .. }
                    );
                    if level_error {
                        error!(host = %self.settings.name, error = %err, retry_in_ms = delay.as_millis() as u64,
                            "The server refused the enrolment token; check --token (it must be the server's enrol.token).");
                    } else {
                        warn!(host = %self.settings.name, error = %err,
                            retry_in_ms = delay.as_millis() as u64,
                            buffered = self.buffer.len(), dropped = self.buffer.unreported_dropped(),
                            "Could not send to the server; will retry.");
                    }
                }
            }
        }
    }

    fn has_pending(&self) -> bool {
        self.pending_profile.is_some() || self.buffer.has_pending()
    }

    async fn collect(&mut self) {
        let Collected {
            mut profile,
            samples,
        } = self.collector.collect().await;
        self.stats.collections += 1;
        profile.labels = self.settings.labels.clone();
        self.pending_profile = self.changes.is_news(&profile).then(|| profile.clone());
        self.latest_profile = Some(profile);
        let dropped = self.buffer.extend(samples);
        if dropped > 0 && !self.drop_warned {
            self.drop_warned = true;
            warn!(host = %self.settings.name, capacity = self.buffer.capacity(),
                dropped = self.buffer.unreported_dropped(),
                "Sample buffer is full; dropping the oldest samples until the server is back.");
        }
    }

    /// Enrols if needed, sends a pending profile, then drains the buffer in batches. On a 401
    /// it enrols again once and starts over.
    async fn flush(&mut self) -> Result<(), SendError> {
        match self.flush_once().await {
            Err(SendError::Unauthorized) if self.token.is_some() => {
                info!(host = %self.settings.name, "The server refused the agent token; enrolling again.");
                self.token = None;
                self.changes.forget();
                self.pending_profile = self.latest_profile.clone();
                self.flush_once().await
            }
            other => other,
        }
    }

    async fn flush_once(&mut self) -> Result<(), SendError> {
        let token = match &self.token {
            Some(t) => t.clone(),
            None => {
                let req = EnrolRequest {
                    name: self.settings.name.clone(),
                    labels: self.settings.labels.clone(),
                    address: self.settings.address.clone(),
                };
                let t = self.transport.enrol(&req).await?;
                self.stats.enrolments += 1;
                info!(host = %self.settings.name, "Enrolled with the server.");
                // A fresh enrolment may be a server that lost its store: send the profile anew.
                self.changes.forget();
                self.pending_profile = self.latest_profile.clone();
                self.token = Some(t.clone());
                self.token_tx.send_replace(Some(t.clone()));
                t
            }
        };
        if let Some(profile) = self.pending_profile.take() {
            match self.transport.send_profile(&token, &profile).await {
                Ok(()) => {
                    self.stats.profiles_sent += 1;
                    self.changes.mark_sent(&profile);
                    debug!(host = %self.settings.name, "Sent the profile.");
                }
                Err(SendError::Rejected { status, message }) => {
                    // Resending the same body would be refused again; wait for a change.
                    error!(host = %self.settings.name, status, error = %message,
                        "The server rejected the profile.");
                    self.changes.mark_sent(&profile);
                }
                Err(e) => {
                    self.pending_profile = Some(profile);
                    return Err(e);
                }
            }
        }
        while self.buffer.has_pending() {
            let samples = self.buffer.peek_batch(self.settings.batch.get());
            let dropped = self.buffer.unreported_dropped();
            let n = samples.len();
            let body = SamplesRequest { samples, dropped };
            match self.transport.send_samples(&token, &body).await {
                Ok(()) => {
                    self.buffer.commit(n, dropped);
                    self.stats.samples_sent += n as u64;
                    self.stats.dropped_reported += dropped;
                    if dropped > 0 {
                        info!(host = %self.settings.name, dropped,
                            "Told the server about samples dropped while it was away.");
                        self.drop_warned = false;
                    }
                }
                Err(SendError::Rejected { status, message }) => {
                    error!(host = %self.settings.name, status, error = %message, samples = n,
                        "The server rejected a batch of samples; discarding it.");
                    self.buffer.commit(n, 0);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
