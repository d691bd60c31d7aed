//! The loop's timing on tokio's paused clock, against a fake server and a fake host.

use std::cell::RefCell;
use std::ops::Range;
use std::rc::Rc;

use super::*;

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Enrol,
    Profile,
    Samples { n: usize, dropped: u64 },
}

/// A scripted server: down during some windows, optionally forgetting its tokens at a moment,
/// optionally rejecting sample batches.
#[derive(Default)]
struct FakeServer {
    start: Option<Instant>,
    down: Vec<Range<Duration>>,
    forget_tokens_at: Option<Duration>,
    refuse_enrolment: bool,
    reject_samples: bool,
    issued: u32,
    valid: Option<String>,
    calls: Vec<(Duration, Call)>,
    received: Vec<MetricSample>,
    dropped: u64,
    profiles: Vec<HostProfile>,
}

impl FakeServer {
    fn now(&self) -> Duration {
        Instant::now() - self.start.expect("started")
    }

    fn gate(&mut self, call: Call) -> Result<(), SendError> {
        let t = self.now();
        self.calls.push((t, call));
        if self.down.iter().any(|w| w.contains(&t)) {
            return Err(SendError::Unavailable("connection refused".into()));
        }
        if self.forget_tokens_at.is_some_and(|at| t >= at) {
            self.forget_tokens_at = None;
            self.valid = None;
        }
        Ok(())
    }

    fn check(&self, token: &str) -> Result<(), SendError> {
        if self.valid.as_deref() == Some(token) {
            Ok(())
        } else {
            Err(SendError::Unauthorized)
        }
    }

    fn count(&self, pred: impl Fn(&Call) -> bool) -> usize {
        self.calls.iter().filter(|(_, c)| pred(c)).count()
    }
}

#[derive(Clone)]
struct Fake(Rc<RefCell<FakeServer>>);

impl Transport for Fake {
    async fn enrol(&mut self, _req: &EnrolRequest) -> Result<String, SendError> {
        let mut s = self.0.borrow_mut();
        s.gate(Call::Enrol)?;
        if s.refuse_enrolment {
            return Err(SendError::Unauthorized);
        }
        s.issued += 1;
        let t = format!("agent-token-{}", s.issued);
        s.valid = Some(t.clone());
        Ok(t)
    }

    async fn send_profile(&mut self, token: &str, profile: &HostProfile) -> Result<(), SendError> {
        let mut s = self.0.borrow_mut();
        s.gate(Call::Profile)?;
        s.check(token)?;
        s.profiles.push(profile.clone());
        Ok(())
    }

    async fn send_samples(&mut self, token: &str, body: &SamplesRequest) -> Result<(), SendError> {
        let mut s = self.0.borrow_mut();
        s.gate(Call::Samples {
            n: body.samples.len(),
            dropped: body.dropped,
        })?;
        s.check(token)?;
        if s.reject_samples {
            return Err(SendError::Rejected {
                status: 400,
                message: "missing field `value`".into(),
            });
        }
        s.received.extend(body.samples.iter().cloned());
        s.dropped += body.dropped;
        Ok(())
    }
}

/// A host whose packages a test can change while the agent runs; one `tick` sample per
/// collection, numbered.
#[derive(Clone)]
struct FakeHost {
    packages: Rc<RefCell<BTreeMap<String, String>>>,
    n: Rc<RefCell<i64>>,
}

impl FakeHost {
    fn new() -> Self {
        FakeHost {
            packages: Rc::new(RefCell::new([("openssl".into(), "3.0.11".into())].into())),
            n: Rc::new(RefCell::new(0)),
        }
    }
}

impl Collector for FakeHost {
    async fn collect(&mut self) -> Collected {
        let mut n = self.n.borrow_mut();
        *n += 1;
        let profile = HostProfile {
            hostname: Some("web-01".into()),
            collected_at_ms: *n,
            packages: Some(self.packages.borrow().clone()),
            metrics: [("load1".to_string(), *n as f64)].into(),
            ..Default::default()
        };
        let samples = vec![MetricSample {
            ts_ms: *n,
            name: "tick".into(),
            value: *n as f64,
        }];
        Collected { profile, samples }
    }
}

fn settings() -> Settings {
    let mut s = Settings::new(HostName::new("web-01").unwrap());
    s.labels.insert("role".into(), "web".into());
    s.interval = Duration::from_secs(1);
    s.backoff = BackoffPolicy {
        base: Duration::from_secs(1),
        cap: Duration::from_secs(8),
    };
    s
}

fn setup(
    server: FakeServer,
    settings: Settings,
) -> (Rc<RefCell<FakeServer>>, FakeHost, Agent<Fake, FakeHost>) {
    let server = Rc::new(RefCell::new(FakeServer {
        start: Some(Instant::now()),
        ..server
    }));
    let host = FakeHost::new();
    let backoff = Backoff::with_seed(settings.backoff, 42);
    let agent = Agent::with_backoff(settings, Fake(server.clone()), host.clone(), backoff);
    (server, host, agent)
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[tokio::test(start_paused = true)]
async fn sends_profile_at_start_then_samples_every_interval() {
    let (server, _host, agent) = setup(FakeServer::default(), settings());
    let stats = agent.run(tokio::time::sleep(secs(10.5))).await;
    let s = server.borrow();
    assert_eq!(s.calls[0], (Duration::ZERO, Call::Enrol));
    assert_eq!(s.calls[1], (Duration::ZERO, Call::Profile));
    assert_eq!(s.profiles.len(), 1, "an unchanged profile is sent once");
    assert_eq!(
        s.profiles[0].labels.get("role").map(String::as_str),
        Some("web")
    );
    let sample_times: Vec<Duration> = s
        .calls
        .iter()
        .filter(|(_, c)| matches!(c, Call::Samples { .. }))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(
        sample_times,
        (0..=10).map(|i| secs(i as f64)).collect::<Vec<_>>()
    );
    assert_eq!(s.received.len(), 11);
    assert_eq!(stats.collections, 11);
    assert_eq!(stats.failed_attempts, 0);
    assert_eq!(stats.buffered_at_exit, 0);
}

#[tokio::test(start_paused = true)]
async fn resends_the_profile_only_when_configuration_changes() {
    let (server, host, agent) = setup(FakeServer::default(), settings());
    let packages = host.packages.clone();
    let change = async move {
        tokio::time::sleep(secs(3.5)).await;
        packages
            .borrow_mut()
            .insert("openssl".into(), "3.1.0".into());
        tokio::time::sleep(secs(3.0)).await;
    };
    agent.run(change).await;
    let s = server.borrow();
    let profile_times: Vec<Duration> = s
        .calls
        .iter()
        .filter(|(_, c)| *c == Call::Profile)
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(profile_times, vec![secs(0.0), secs(4.0)]);
    assert_eq!(s.profiles[1].packages.as_ref().unwrap()["openssl"], "3.1.0");
}

#[tokio::test(start_paused = true)]
async fn backs_off_while_the_server_is_away_and_reports_what_it_dropped() {
    let mut st = settings();
    st.buffer = NonZeroUsize::new(5).unwrap();
    let server = FakeServer {
        down: vec![secs(0.0)..secs(30.0)],
        ..Default::default()
    };
    let (server, _host, agent) = setup(server, st.clone());
    let stats = agent.run(tokio::time::sleep(secs(45.5))).await;
    let s = server.borrow();

    // Attempts during the outage are all enrolments (the agent has no token yet), spaced by
    // the jittered, capped exponential schedule.
    let attempts: Vec<Duration> = s
        .calls
        .iter()
        .filter(|(t, _)| *t < secs(30.0))
        .map(|(t, _)| *t)
        .collect();
    assert!(attempts.len() >= 5, "{attempts:?}");
    for (i, pair) in attempts.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let ceiling = st.backoff.ceiling(i as u32 + 1);
        assert!(
            gap >= ceiling / 2 && gap <= ceiling,
            "gap {i} = {gap:?}, ceiling {ceiling:?}"
        );
    }
    assert!(attempts.windows(2).all(|p| p[1] - p[0] <= st.backoff.cap));

    // After the outage: one enrolment, the profile, then the buffered samples with the count of
    // those that did not fit, reported exactly once.
    let after: Vec<&Call> = s
        .calls
        .iter()
        .filter(|(t, _)| *t >= secs(30.0))
        .map(|(_, c)| c)
        .collect();
    assert_eq!(after[0], &Call::Enrol);
    assert_eq!(after[1], &Call::Profile);
    let Call::Samples { n, dropped } = after[2] else {
        panic!("expected samples, got {after:?}")
    };
    assert_eq!(*n, 5, "the buffer holds its capacity");
    assert!(*dropped >= 25, "dropped {dropped}");
    assert_eq!(
        s.count(|c| matches!(c, Call::Samples { dropped, .. } if *dropped > 0)),
        1
    );

    // Every collected sample is either received or reported dropped; the kept ones are the newest.
    assert_eq!(s.received.len() as u64 + s.dropped, stats.collections);
    assert_eq!(stats.dropped_reported, s.dropped);
    let first_kept = s.received[0].ts_ms;
    assert_eq!(first_kept as u64, s.dropped + 1);
    assert!(s.received.windows(2).all(|w| w[1].ts_ms == w[0].ts_ms + 1));
    assert_eq!(stats.buffered_at_exit, 0);
}

#[tokio::test(start_paused = true)]
async fn enrols_again_after_a_401_and_loses_nothing() {
    let server = FakeServer {
        forget_tokens_at: Some(secs(4.5)),
        ..Default::default()
    };
    let (server, _host, agent) = setup(server, settings());
    let stats = agent.run(tokio::time::sleep(secs(8.5))).await;
    let s = server.borrow();
    assert_eq!(s.count(|c| *c == Call::Enrol), 2);
    assert_eq!(
        s.profiles.len(),
        2,
        "the profile is sent again after re-enrolment"
    );
    assert_eq!(stats.enrolments, 2);
    assert_eq!(stats.failed_attempts, 0);
    assert_eq!(s.received.len() as u64, stats.collections);
}

#[tokio::test(start_paused = true)]
async fn a_rejected_batch_is_discarded_not_retried() {
    let server = FakeServer {
        reject_samples: true,
        ..Default::default()
    };
    let (server, _host, agent) = setup(server, settings());
    let stats = agent.run(tokio::time::sleep(secs(5.5))).await;
    let s = server.borrow();
    assert_eq!(
        s.count(|c| matches!(c, Call::Samples { .. })),
        6,
        "one try per collection"
    );
    assert_eq!(stats.failed_attempts, 0);
    assert_eq!(stats.buffered_at_exit, 0);
}

#[tokio::test(start_paused = true)]
async fn a_refused_enrolment_token_backs_off_and_keeps_buffering() {
    let server = FakeServer {
        refuse_enrolment: true,
        ..Default::default()
    };
    let mut st = settings();
    st.buffer = NonZeroUsize::new(100).unwrap();
    let (server, _host, agent) = setup(server, st);
    let stats = agent.run(tokio::time::sleep(secs(20.5))).await;
    let s = server.borrow();
    let enrols = s.count(|c| *c == Call::Enrol);
    assert!(
        (4..=8).contains(&enrols),
        "{enrols} enrolment attempts in 20 s"
    );
    assert_eq!(stats.buffered_at_exit, 21);
    assert!(s.profiles.is_empty());
}

#[tokio::test(start_paused = true)]
async fn shutdown_flushes_and_stops_promptly() {
    let mut st = settings();
    st.interval = Duration::from_secs(60);
    let (server, _host, agent) = setup(FakeServer::default(), st);
    let started = Instant::now();
    let stats = agent.run(tokio::time::sleep(secs(1.0))).await;
    assert_eq!(
        Instant::now() - started,
        secs(1.0),
        "the signal is not held until the next tick"
    );
    assert_eq!(stats.collections, 1);
    assert_eq!(server.borrow().received.len(), 1);
}
