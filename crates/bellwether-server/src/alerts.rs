//! Alerts: webhooks that receive the event log's events, with retries, backoff and a
//! delivery log (docs/alerts.md).
//!
//! **Rules.** A rule (`bellwether_engine::alerts::AlertRule`) names a URL, a body shape
//! (`generic` or `slack`), event-kind globs and optionally host globs. Server-wide rules are
//! stored (`POST /api/v1/alerts/rules`) and see every event; a rollout's or a patch's plan may
//! hold rules in its `alerts:` section, which see only that task's events.
//!
//! **The dispatcher** follows the event log on the leader only: while this replica holds a
//! [`crate::leader::Term`] it reads the events after the stored cursor, queues a delivery for
//! each (rule, event) that matches (with the rendered body) and moves the cursor, in one
//! transaction (`Store::enqueue_alerts`); a delivery already queued for its rule and event is
//! not queued again. Event ids are allocated before their transaction commits, so on
//! PostgreSQL an event may become visible after a larger id: the cursor stops before a missing
//! id until it is [`GAP_GRACE_MS`] old (a rolled-back transaction leaves a hole for ever), and
//! the events after it are queued meanwhile (queuing is idempotent). A restart or a new leader
//! resumes from the cursor, so no event is lost; a delivery whose attempt was cut off by a
//! crash or a lost term is sent again (at least once).
//!
//! **Delivery.** Due deliveries are POSTed, each with its own timeout, several at a time. A
//! 2xx answer is delivered; 408, 429, 5xx, a timeout or a connection error is retried after
//! an exponential backoff with jitter (or the answer's `Retry-After`, at most an hour);
//! another 4xx (and a redirect, which is not followed) fails at once; the last allowed
//! attempt that fails fails the delivery. Every attempt goes into the delivery log with its
//! status or error and the next attempt's time. A URL is never logged or answered in full:
//! `redact_url` keeps the scheme, host, port and first path segment.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use bellwether_engine::alerts::{redact_url, AlertFormat, AlertRule};
use bellwether_store::{
    AlertRuleCreated, AlertRuleRecord, AttemptFilter, AttemptOutcome, AttemptRecord,
    DeliveryRecord, Event, EventFilter, NewAttempt, NewDelivery, Store, StoreError,
};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::{Operator, Viewer};
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::{now_ms, AppState};

/// The routes of this module, as (method, path); docs/api.md and docs/openapi.yaml describe
/// each (a test checks).
pub const ALERT_ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/alerts/rules"),
    ("POST", "/api/v1/alerts/rules"),
    ("GET", "/api/v1/alerts/rules/{id}"),
    ("DELETE", "/api/v1/alerts/rules/{id}"),
    ("POST", "/api/v1/alerts/rules/{id}/test"),
    ("GET", "/api/v1/alerts/deliveries"),
];

pub(crate) fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/api/v1/alerts/rules", get(list_rules).post(add_rule))
        .route(
            "/api/v1/alerts/rules/{id}",
            get(show_rule).delete(remove_rule),
        )
        .route("/api/v1/alerts/rules/{id}/test", post(test_rule))
        .route("/api/v1/alerts/deliveries", get(deliveries))
}

/// How long the cursor waits at a missing event id before it counts the id as never coming.
pub const GAP_GRACE_MS: i64 = 10_000;
/// The most events one pass of the dispatcher reads.
const EVENT_BATCH: i64 = 500;
/// The most settled deliveries one pruning pass deletes (it goes on at the next pass).
const PRUNE_BATCH: i64 = 1_000;
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER_MS: i64 = 3_600_000;
/// The longest reason quoted in a summary.
const MAX_REASON: usize = 1_000;

/// The retry policy of every delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertPolicy {
    /// Attempts in all, the first included (default 8).
    pub attempts: u32,
    /// The wait after the first failed attempt, before jitter (default 2 s); it doubles with
    /// each failure.
    pub base: Duration,
    /// No wait is longer (default 5 min).
    pub max: Duration,
    /// Each POST's timeout, connecting included (default 10 s).
    pub timeout: Duration,
    /// How often the dispatcher reads the event log and the due deliveries (default 500 ms).
    pub poll: Duration,
}

impl Default for AlertPolicy {
    fn default() -> Self {
        AlertPolicy {
            attempts: 8,
            base: Duration::from_secs(2),
            max: Duration::from_secs(300),
            timeout: Duration::from_secs(10),
            poll: Duration::from_millis(500),
        }
    }
}

impl AlertPolicy {
    /// Checks every setting against its range, naming the server flag (and config key) of a
    /// bad one.
    pub fn check(&self) -> Result<(), String> {
        check_range("attempts", u64::from(self.attempts), 1, MAX_ATTEMPTS)?;
        check_span("backoff", self.base, MIN_BACKOFF, MAX_BACKOFF)?;
        check_span("backoff-max", self.max, MIN_BACKOFF, MAX_BACKOFF)?;
        check_span("timeout", self.timeout, MIN_TIMEOUT, MAX_TIMEOUT)?;
        check_span("poll", self.poll, MIN_POLL, MAX_POLL)?;
        if self.base > self.max {
            return Err(format!(
                "--alert-backoff (config key alert_backoff) is {}, longer than --alert-backoff-max \
                 (alert_backoff_max) {}: the first wait cannot exceed the longest",
                span(self.base),
                span(self.max)
            ));
        }
        Ok(())
    }

    /// The un-jittered wait after the `failures`-th failed attempt (1-based):
    /// `min(max, base · 2^(failures-1))`.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(30);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The wait after the `failures`-th failed attempt: the ceiling scaled by a random factor
    /// in [½, 1] ("equal jitter"), drawn from the OS-seeded generator.
    pub fn backoff(&self, failures: u32) -> Duration {
        let c = self.ceiling(failures).as_millis() as u64;
        let half = c / 2;
        Duration::from_millis(half + rand::thread_rng().gen_range(0..=c - half))
    }
}

// ---- rendering ----------------------------------------------------------------------------

/// Where an event's task is read through the API.
fn task_links(ev: &Event) -> Value {
    let mut links = serde_json::Map::new();
    links.insert(
        "event".into(),
        json!(format!(
            "/api/v1/events?after={}&limit=1",
            ev.id.saturating_sub(1)
        )),
    );
    if let Some(task) = &ev.task {
        let family = ev.kind.split('.').next().unwrap_or_default();
        let page = match family {
            "rollout" => Some(format!("/api/v1/rollouts/{task}")),
            "patch" => Some(format!("/api/v1/patches/{task}")),
            "config" => Some(format!("/api/v1/config/tasks/{task}")),
            _ => None,
        };
        if let Some(p) = page {
            links.insert("task".into(), json!(p));
        }
        links.insert(
            "task_events".into(),
            json!(format!("/api/v1/events?task={task}")),
        );
    }
    Value::Object(links)
}

/// One sentence about the event: `rollout.host.rolled_back on web-03 (task r-12): REASON`.
pub fn summary(ev: &Event) -> String {
    let mut s = ev.kind.clone();
    if let Some(h) = &ev.host {
        s.push_str(&format!(" on {h}"));
    }
    if let Some(t) = &ev.task {
        s.push_str(&format!(" (task {t})"));
    }
    let reason = bellwether_model::text::quote_message(ev.reason.trim(), MAX_REASON);
    if !reason.is_empty() {
        s.push_str(": ");
        s.push_str(&reason);
    }
    s
}

/// Escapes text for Slack's mrkdwn (`&`, `<`, `>`).
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The body a rule posts for an event.
pub fn render(format: AlertFormat, rule: &str, ev: &Event) -> Value {
    match format {
        AlertFormat::Generic => json!({
            "event": ev,
            "rule": rule,
            "summary": summary(ev),
            "links": task_links(ev),
        }),
        AlertFormat::Slack => {
            let mut head = format!("*{}*", slack_escape(&ev.kind));
            if let Some(h) = &ev.host {
                head.push_str(&format!(" on `{}`", slack_escape(h)));
            }
            let reason = bellwether_model::text::quote_message(ev.reason.trim(), MAX_REASON);
            let mut context = vec![format!("event {}", ev.id)];
            if let Some(t) = &ev.task {
                context.push(format!("task `{}`", slack_escape(t)));
            }
            context.push(format!("rule `{}`", slack_escape(rule)));
            let secs = ev.ts_ms.div_euclid(1000);
            context.push(format!(
                "<!date^{secs}^{{date_num}} {{time_secs}}|{secs} (Unix time)>"
            ));
            json!({
                "text": slack_escape(&summary(ev)),
                "blocks": [
                    {"type": "section", "text": {"type": "mrkdwn", "text": format!("{head}\n{}", slack_escape(&reason))}},
                    {"type": "context", "elements": [{"type": "mrkdwn", "text": context.join(" · ")}]},
                ],
            })
        }
    }
}

// ---- one attempt --------------------------------------------------------------------------

/// What one POST gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tried {
    pub status: Option<u16>,
    /// The answer's `Retry-After`, in ms.
    pub retry_after_ms: Option<i64>,
    /// What went wrong, without the URL.
    pub error: Option<String>,
}

/// How an attempt counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Delivered,
    Retry,
    Permanent,
}

impl Tried {
    pub(crate) fn verdict(&self) -> Verdict {
        match self.status {
            Some(s) if (200..300).contains(&s) => Verdict::Delivered,
            Some(408 | 429) => Verdict::Retry,
            Some(s) if (300..500).contains(&s) => Verdict::Permanent,
            _ => Verdict::Retry,
        }
    }
}

/// Parses `Retry-After`: seconds, or an HTTP date (then relative to `now_ms`).
pub(crate) fn parse_retry_after(v: &str, now_ms: i64) -> Option<i64> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some((secs.min(u64::MAX / 1000) * 1000).min(MAX_RETRY_AFTER_MS as u64) as i64);
    }
    let at = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822).ok()?;
    let at_ms = (at.unix_timestamp_nanos() / 1_000_000) as i64;
    Some(at_ms.saturating_sub(now_ms).clamp(0, MAX_RETRY_AFTER_MS))
}

/// Describes a failed request without its URL (reqwest's errors quote it).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "cannot connect"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_request() {
        "request failed"
    } else {
        "failed"
    };
    let mut out = kind.to_string();
    let mut source = std::error::Error::source(e);
    let mut n = 0;
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
        n += 1;
        if n == 4 {
            break;
        }
    }
    bellwether_model::text::quote_message(&out, 400)
}

/// The HTTP client of the deliveries: no redirects (a 3xx is a configuration error), no
/// proxy from the environment, its own timeouts.
pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("bellwether-alerts/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the alert HTTP client builds")
}

/// POSTs `body` to `url` within `timeout` (on tokio's clock, so a paused test clock runs it).
pub(crate) async fn post_once(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
    timeout: Duration,
    now_ms: i64,
) -> Tried {
    let send = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send();
    match tokio::time::timeout(timeout, send).await {
        Err(_) => Tried {
            status: None,
            retry_after_ms: None,
            error: Some(format!("timed out after {} ms", timeout.as_millis())),
        },
        Ok(Err(e)) => Tried {
            status: None,
            retry_after_ms: None,
            error: Some(describe(&e)),
        },
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let retry_after_ms = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, now_ms));
            let error = if (200..300).contains(&status) {
                None
            } else if (300..400).contains(&status) {
                Some(format!(
                    "HTTP {status}: redirects are not followed; give the webhook's final URL"
                ))
            } else {
                Some(format!("HTTP {status}"))
            };
            Tried {
                status: Some(status),
                retry_after_ms,
                error,
            }
        }
    }
}

/// What to log for attempt number `attempt` (1-based) that gave `tried`, at `now_ms`.
pub(crate) fn next_step(
    policy: &AlertPolicy,
    attempt: i64,
    tried: &Tried,
    now_ms: i64,
) -> NewAttempt {
    let (outcome, next, error) = match tried.verdict() {
        Verdict::Delivered => (AttemptOutcome::Delivered, None, None),
        Verdict::Permanent => (
            AttemptOutcome::Failed,
            None,
            tried
                .error
                .clone()
                .map(|e| format!("{e} (not retried: the receiver refused the alert)")),
        ),
        Verdict::Retry if attempt >= i64::from(policy.attempts) => (
            AttemptOutcome::Failed,
            None,
            tried
                .error
                .clone()
                .map(|e| format!("{e} (gave up after {attempt} attempts)")),
        ),
        Verdict::Retry => {
            let wait = tried.retry_after_ms.unwrap_or_else(|| {
                policy
                    .backoff(attempt as u32)
                    .as_millis()
                    .min(i64::MAX as u128) as i64
            });
            (
                AttemptOutcome::Retry,
                Some(now_ms.saturating_add(wait)),
                tried.error.clone(),
            )
        }
    };
    NewAttempt {
        attempt,
        at_ms: now_ms,
        status: tried.status,
        error,
        outcome,
        next_attempt_ms: next,
    }
}

/// Makes one attempt at a stored delivery and logs it; answers the logged attempt (`None`
/// when another sender logged this attempt first).
pub(crate) async fn attempt_delivery(
    store: &Store,
    client: &reqwest::Client,
    policy: &AlertPolicy,
    clock: &Clock,
    d: &DeliveryRecord,
    max_attempts_override: Option<u32>,
) -> Result<Option<NewAttempt>, StoreError> {
    let tried = post_once(client, &d.target, &d.body, policy.timeout, clock.now_ms()).await;
    let policy = match max_attempts_override {
        Some(n) => AlertPolicy {
            attempts: n,
            ..policy.clone()
        },
        None => policy.clone(),
    };
    let step = next_step(&policy, d.attempts + 1, &tried, clock.now_ms());
    match step.outcome {
        AttemptOutcome::Delivered => {
            tracing::info!(delivery = d.id, rule = %d.rule, url = %d.url, attempt = step.attempt, "Alert delivered.")
        }
        _ => tracing::warn!(
            delivery = d.id, rule = %d.rule, url = %d.url, attempt = step.attempt,
            outcome = step.outcome.as_str(), error = step.error.as_deref().unwrap_or(""),
            "Alert not delivered."
        ),
    }
    Ok(store
        .record_alert_attempt(d.id, &step)
        .await?
        .then_some(step))
}

/// The most attempts a delivery may be given.
pub const MAX_ATTEMPTS: u64 = 100;
/// The range of `--alert-backoff` and `--alert-backoff-max`.
pub const MIN_BACKOFF: Duration = Duration::from_millis(10);
pub const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);
/// The range of `--alert-timeout`.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(100);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);
/// The range of `--alert-poll`.
pub const MIN_POLL: Duration = Duration::from_millis(10);
pub const MAX_POLL: Duration = Duration::from_secs(60);
/// The most deliveries that may be in flight at once.
pub const MAX_CONCURRENCY: u64 = 256;
/// The range of `--alert-log-keep-for`.
pub const MIN_KEEP_FOR: Duration = Duration::from_secs(60);
pub const MAX_KEEP_FOR: Duration = Duration::from_secs(10 * 366 * 24 * 3600);
/// The most settled deliveries `--alert-log-keep-last` may keep.
pub const MAX_KEEP_LAST: u64 = 100_000_000;

/// How many deliveries the dispatcher runs at once, and how much of the delivery log it keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertLimits {
    /// The most deliveries in flight at once (default 16).
    pub concurrency: usize,
    /// Settled deliveries (delivered or failed) last updated longer ago than this are deleted
    /// with their attempts (default 30 days).
    pub keep_for: Duration,
    /// At most this many settled deliveries are kept, the newest (default 10 000).
    pub keep_last: u64,
    /// How often the dispatcher prunes the log (default 1 min).
    pub prune_every: Duration,
}

impl Default for AlertLimits {
    fn default() -> Self {
        AlertLimits {
            concurrency: 16,
            keep_for: Duration::from_secs(30 * 24 * 3600),
            keep_last: 10_000,
            prune_every: Duration::from_secs(60),
        }
    }
}

impl AlertLimits {
    /// Checks every setting against its range, naming the server flag (and config key).
    pub fn check(&self) -> Result<(), String> {
        check_range("concurrency", self.concurrency as u64, 1, MAX_CONCURRENCY)?;
        check_span("log-keep-for", self.keep_for, MIN_KEEP_FOR, MAX_KEEP_FOR)?;
        check_range("log-keep-last", self.keep_last, 1, MAX_KEEP_LAST)?;
        if self.prune_every.is_zero() {
            return Err("the alert log's pruning interval must be longer than 0".into());
        }
        Ok(())
    }
}

/// `--alert-NAME`'s number within [lo, hi].
fn check_range(name: &str, v: u64, lo: u64, hi: u64) -> Result<(), String> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(format!(
            "--alert-{name} (config key alert_{}) is {v}; it must be {lo} to {hi}",
            name.replace('-', "_")
        ))
    }
}

/// `--alert-NAME`'s duration within [lo, hi].
fn check_span(name: &str, v: Duration, lo: Duration, hi: Duration) -> Result<(), String> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(format!(
            "--alert-{name} (config key alert_{}) is {}; it must be {} to {}",
            name.replace('-', "_"),
            span(v),
            span(lo),
            span(hi)
        ))
    }
}

/// A duration as the flags take it (`1500ms`, `2s`, `5m`, `30d`).
pub fn span(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, n) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= n && ms.is_multiple_of(n) {
            return format!("{}{unit}", ms / n);
        }
    }
    format!("{ms}ms")
}

// ---- the dispatcher ---------------------------------------------------------------------

/// The dispatcher's clock, in Unix ms: the system's, or a test's.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(now_ms))
    }

    pub fn new(f: impl Fn() -> i64 + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(f))
    }

    pub fn now_ms(&self) -> i64 {
        (self.0)()
    }
}

/// A rule the dispatcher matches, with where it came from.
#[derive(Debug, Clone)]
struct LiveRule {
    key: String,
    task: Option<String>,
    rule: AlertRule,
}

/// Follows the event log and sends the deliveries (one per leader term).
pub struct Dispatcher {
    store: Store,
    client: reqwest::Client,
    policy: AlertPolicy,
    clock: Clock,
    /// When each missing event id was first seen missing.
    gaps: BTreeMap<i64, i64>,
    /// The plan rules of each task seen (none for a kind without them).
    plan_rules: HashMap<String, Arc<Vec<AlertRule>>>,
    in_flight: HashSet<i64>,
    running: tokio::task::JoinSet<i64>,
    limits: AlertLimits,
    /// When the log was last pruned, on the dispatcher's clock.
    pruned_at_ms: Option<i64>,
}

impl Dispatcher {
    pub fn new(store: Store, policy: AlertPolicy, clock: Clock) -> Dispatcher {
        Dispatcher {
            store,
            client: http_client(),
            policy,
            clock,
            gaps: BTreeMap::new(),
            plan_rules: HashMap::new(),
            in_flight: HashSet::new(),
            running: tokio::task::JoinSet::new(),
            limits: AlertLimits::default(),
            pruned_at_ms: None,
        }
    }

    /// The same dispatcher with these limits (concurrency, the delivery log's retention).
    pub fn with_limits(mut self, limits: AlertLimits) -> Dispatcher {
        self.limits = limits;
        self
    }

    /// Deletes the settled deliveries the log keeps no longer (older than `keep_for`, or
    /// beyond the newest `keep_last`), in batches, until none is left; answers how many. Pending
    /// deliveries, the ones in flight among them, are never deleted (see
    /// `Store::prune_alert_deliveries`).
    pub async fn prune(&mut self) -> Result<u64, StoreError> {
        let now = self.clock.now_ms();
        let keep_for = i64::try_from(self.limits.keep_for.as_millis()).unwrap_or(i64::MAX);
        let before = now.saturating_sub(keep_for);
        let keep_last = i64::try_from(self.limits.keep_last).unwrap_or(i64::MAX);
        let mut total = 0;
        loop {
            let n = self
                .store
                .prune_alert_deliveries(before, keep_last, PRUNE_BATCH)
                .await?;
            total += n;
            if n < PRUNE_BATCH as u64 {
                break;
            }
        }
        self.pruned_at_ms = Some(now);
        if total > 0 {
            tracing::info!(deleted = total, "Pruned the alert delivery log.");
        }
        Ok(total)
    }

    /// Prunes when the last pruning is `prune_every` old (or there was none in this term).
    async fn prune_if_due(&mut self) -> Result<(), StoreError> {
        let every = i64::try_from(self.limits.prune_every.as_millis()).unwrap_or(i64::MAX);
        let due = self
            .pruned_at_ms
            .is_none_or(|t| self.clock.now_ms().saturating_sub(t) >= every);
        if due {
            self.prune().await?;
        }
        Ok(())
    }

    async fn rules_of_task(&mut self, task: &str) -> Arc<Vec<AlertRule>> {
        if let Some(r) = self.plan_rules.get(task) {
            return r.clone();
        }
        let rules = match self.store.task(task).await {
            Ok(Some(rec)) => Arc::new(plan_alerts(&rec.kind, &rec.plan_file, &rec.plan_yaml)),
            // Read again next time: the store may be back.
            Err(e) => {
                tracing::warn!(task, error = %e, "Cannot read a task's alert rules.");
                return Arc::new(Vec::new());
            }
            Ok(None) => Arc::new(Vec::new()),
        };
        if self.plan_rules.len() >= 1024 {
            self.plan_rules.clear();
        }
        self.plan_rules.insert(task.to_string(), rules.clone());
        rules
    }

    /// Reads the events after the cursor, queues a delivery for every rule each matches and
    /// moves the cursor; answers how many deliveries were new.
    pub async fn scan(&mut self) -> Result<usize, StoreError> {
        let now = self.clock.now_ms();
        let cursor = self.store.alert_cursor().await?;
        let events = self
            .store
            .find_events(
                &EventFilter {
                    after_id: Some(cursor),
                    ..EventFilter::default()
                },
                EVENT_BATCH,
            )
            .await?;
        if events.is_empty() {
            return Ok(0);
        }
        let server: Vec<LiveRule> = self
            .store
            .alert_rules()
            .await?
            .into_iter()
            .filter_map(|r| server_rule(&r))
            .collect();
        let mut next = cursor;
        let mut held = false;
        let mut queue = Vec::new();
        for ev in &events {
            if !held {
                if ev.id == next + 1 {
                    next = ev.id;
                } else {
                    let first_seen = *self.gaps.entry(next + 1).or_insert(now);
                    if now - first_seen >= GAP_GRACE_MS {
                        tracing::debug!(
                            from = next + 1,
                            to = ev.id - 1,
                            "Event ids never committed; moving on."
                        );
                        next = ev.id;
                    } else {
                        held = true;
                    }
                }
            }
            let mut rules: Vec<LiveRule> = server.clone();
            if let Some(task) = &ev.task {
                for r in self.rules_of_task(task).await.iter() {
                    rules.push(LiveRule {
                        key: format!("plan:{task}:{}", r.name),
                        task: Some(task.clone()),
                        rule: r.clone(),
                    });
                }
            }
            for r in rules {
                if r.rule.matches(&ev.kind, ev.host.as_deref()) {
                    queue.push(NewDelivery {
                        rule_key: r.key,
                        rule: r.rule.name.clone(),
                        task: r.task,
                        event_id: Some(ev.id),
                        event_kind: ev.kind.clone(),
                        target: r.rule.url.clone(),
                        url: redact_url(&r.rule.url),
                        format: r.rule.format.as_str().into(),
                        body: render(r.rule.format, &r.rule.name, ev),
                    });
                }
            }
        }
        self.gaps = self.gaps.split_off(&(next + 1));
        let moved = (next > cursor).then_some(next);
        self.store.enqueue_alerts(&queue, moved, now).await
    }

    /// Starts the due deliveries not already in flight (at most `limits.concurrency` at once);
    /// answers how many started.
    pub async fn start_due(&mut self) -> Result<usize, StoreError> {
        while let Some(done) = self.running.try_join_next() {
            if let Ok(id) = done {
                self.in_flight.remove(&id);
            }
        }
        let max = self.limits.concurrency.max(1);
        if self.running.len() >= max {
            return Ok(0);
        }
        let due = self
            .store
            .due_alerts(self.clock.now_ms(), (max * 2) as i64)
            .await?;
        let mut started = 0;
        for d in due {
            if self.running.len() >= max || self.in_flight.contains(&d.id) {
                continue;
            }
            self.in_flight.insert(d.id);
            let (store, client, policy, clock) = (
                self.store.clone(),
                self.client.clone(),
                self.policy.clone(),
                self.clock.clone(),
            );
            self.running.spawn(async move {
                if let Err(e) = attempt_delivery(&store, &client, &policy, &clock, &d, None).await {
                    tracing::warn!(delivery = d.id, error = %e, "Cannot log an alert attempt; it will be sent again.");
                }
                d.id
            });
            started += 1;
        }
        Ok(started)
    }

    /// Waits for every delivery in flight to be attempted and logged.
    pub async fn settle(&mut self) {
        while let Some(done) = self.running.join_next().await {
            if let Ok(id) = done {
                self.in_flight.remove(&id);
            }
        }
    }

    /// One pass as a test drives it: read the log, attempt every due delivery once, wait
    /// until each attempt is logged. Answers the deliveries queued and the attempts made.
    pub async fn pass(&mut self) -> Result<(usize, usize), StoreError> {
        let queued = self.scan().await?;
        let started = self.start_due().await?;
        self.settle().await;
        Ok((queued, started))
    }

    /// Runs until the future is dropped (the term is lost, or the server stops).
    async fn run(&mut self, leader: &crate::leader::Leadership) {
        let mut tick = tokio::time::interval(self.policy.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let scanned = self.scan().await;
            if let Err(e) = &scanned {
                if matches!(e, StoreError::Fenced { .. }) {
                    leader.fenced();
                    return;
                }
                tracing::warn!(error = %e, "Cannot read the event log for alerts; trying again.");
            }
            if let Err(e) = self.start_due().await {
                tracing::warn!(error = %e, "Cannot read the due alerts; trying again.");
            }
            match self.prune_if_due().await {
                Err(StoreError::Fenced { .. }) => {
                    leader.fenced();
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot prune the alert delivery log; trying again.")
                }
                Ok(()) => {}
            }
        }
    }
}

/// A plan's `alerts:` rules, for the kinds whose plans have them.
fn plan_alerts(kind: &str, file: &str, yaml: &str) -> Vec<AlertRule> {
    match kind {
        bellwether_store::ROLLOUT => bellwether_engine::rollout::plan::parse_plan(yaml, file)
            .map(|p| p.alerts)
            .unwrap_or_default(),
        crate::patch::PATCH => bellwether_engine::patch::PatchPlan::parse(file, yaml)
            .map(|p| p.alerts)
            .unwrap_or_default(),
        // A configuration change keeps its YAML, or the JSON form of a plan built from flags,
        // a JSON body or a snapshot restore.
        crate::config::task::CONFIG => bellwether_engine::config::plan::parse_plan(yaml, file)
            .map(|p| p.alerts)
            .or_else(|_| {
                serde_json::from_str::<bellwether_engine::config::plan::ConfigPlan>(yaml)
                    .map(|p| p.alerts)
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn server_rule(r: &AlertRuleRecord) -> Option<LiveRule> {
    match serde_json::from_value::<AlertRule>(r.spec.clone()) {
        Ok(rule) => Some(LiveRule {
            key: format!("server:{}", r.id),
            task: None,
            rule,
        }),
        Err(e) => {
            tracing::error!(rule = r.id, error = %e, "A stored alert rule is not valid; it is skipped.");
            None
        }
    }
}

/// Runs the dispatcher while this replica leads, until `stop` turns true.
pub(crate) async fn run(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut view = state.leader.subscribe();
    loop {
        if *stop.borrow() {
            return;
        }
        if let Some(mut term) = state.leader.term() {
            let mut d = Dispatcher::new(
                state.store.clone(),
                (*state.alerts).clone(),
                Clock::system(),
            )
            .with_limits((*state.alert_limits).clone());
            tokio::select! {
                () = term.lost() => {}
                _ = stop.wait_for(|s| *s) => return,
                () = d.run(&state.leader) => {}
            }
            // In-flight attempts stop with the term; the next leader sends them again.
            d.running.abort_all();
        } else {
            tokio::select! {
                r = view.changed() => if r.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

// ---- the API ------------------------------------------------------------------------------

/// `POST /api/v1/alerts/rules`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRule {
    pub name: String,
    pub url: String,
    /// `generic` (the default) or `slack`.
    #[serde(default)]
    pub format: Option<String>,
    pub events: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
}

/// A server-wide rule as answered: its URL without secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleView {
    pub id: i64,
    pub name: String,
    pub url: String,
    pub format: String,
    pub events: Vec<String>,
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    pub created_at_ms: i64,
}

/// What `POST /api/v1/alerts/rules/{id}/test` did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    pub rule: String,
    pub url: String,
    pub delivery: i64,
    /// Whether the receiver answered 2xx.
    pub delivered: bool,
    pub status: Option<u16>,
    pub error: Option<String>,
}

/// The delivery log as answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryLog {
    pub attempts: Vec<AttemptRecord>,
}

fn view(r: &AlertRuleRecord) -> Result<RuleView, ApiError> {
    let rule: AlertRule = serde_json::from_value(r.spec.clone()).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("stored alert rule {} is not valid: {e}", r.id),
        )
    })?;
    Ok(RuleView {
        id: r.id,
        name: r.name.clone(),
        url: redact_url(&rule.url),
        format: rule.format.as_str().into(),
        events: rule.events,
        hosts: rule.hosts,
        created_at_ms: r.created_at_ms,
    })
}

async fn find_rule(state: &AppState, id: &str) -> Result<AlertRuleRecord, ApiError> {
    if id.is_empty() || id.len() > 64 {
        return Err(ApiError::bad_request(
            "an alert rule is named by its id or its name (1 to 64 characters)",
        ));
    }
    state.store.alert_rule(id).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "unknown alert rule {}; `bellwether alerts list` shows the rules",
            bellwether_model::text::quote(id)
        ))
    })
}

async fn list_rules(
    _: Viewer,
    State(state): State<AppState>,
) -> Result<Json<Vec<RuleView>>, ApiError> {
    let rules = state.store.alert_rules().await?;
    Ok(Json(rules.iter().map(view).collect::<Result<_, _>>()?))
}

async fn show_rule(
    _: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RuleView>, ApiError> {
    Ok(Json(view(&find_rule(&state, &id).await?)?))
}

async fn add_rule(
    _: Operator,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<NewRule>,
) -> Result<(StatusCode, Json<RuleView>), ApiError> {
    let rule = AlertRule::new(
        &req.name,
        &req.url,
        req.format.as_deref().unwrap_or("generic"),
        req.events,
        req.hosts,
    )
    .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    if rule.name.parse::<i64>().is_ok() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "name: a rule name must not be a number (rules are also named by their numeric id)",
        ));
    }
    let spec = serde_json::to_value(&rule).expect("a rule serialises");
    match state
        .store
        .create_alert_rule(&rule.name, &spec, now_ms())
        .await?
    {
        AlertRuleCreated::Created(r) => Ok((StatusCode::CREATED, Json(view(&r)?))),
        AlertRuleCreated::Exists(r) => Err(ApiError::conflict(format!(
            "an alert rule named {} exists (id {}); remove it first to replace it",
            r.name, r.id
        ))),
    }
}

async fn remove_rule(
    _: Operator,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RuleView>, ApiError> {
    let r = find_rule(&state, &id).await?;
    match state.store.remove_alert_rule(r.id, now_ms()).await? {
        Some(r) => Ok(Json(view(&r)?)),
        None => Err(ApiError::not_found(format!("unknown alert rule {id}"))),
    }
}

async fn test_rule(
    _: Operator,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TestResult>, ApiError> {
    let r = find_rule(&state, &id).await?;
    let rule: AlertRule = serde_json::from_value(r.spec.clone())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let now = now_ms();
    let ev = Event {
        id: 0,
        ts_ms: now,
        kind: "alert.test".into(),
        host: None,
        reason: format!(
            "A test of alert rule {} from `bellwether alerts test`: this webhook receives Bellwether's alerts.",
            rule.name
        ),
        figures: json!({"rule": rule.name}),
        task: None,
    };
    let d = state
        .store
        .enqueue_alert(
            &NewDelivery {
                rule_key: format!("test:{}", r.id),
                rule: rule.name.clone(),
                task: None,
                event_id: None,
                event_kind: ev.kind.clone(),
                target: rule.url.clone(),
                url: redact_url(&rule.url),
                format: rule.format.as_str().into(),
                body: render(rule.format, &rule.name, &ev),
            },
            now,
        )
        .await?;
    let step = attempt_delivery(
        &state.store,
        &http_client(),
        &state.alerts,
        &Clock::system(),
        &d,
        Some(1),
    )
    .await?;
    let step = step.ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the test attempt was not logged",
        )
    })?;
    Ok(Json(TestResult {
        rule: rule.name,
        url: d.url,
        delivery: d.id,
        delivered: step.outcome == AttemptOutcome::Delivered,
        status: step.status,
        error: step.error,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveryQuery {
    rule: Option<String>,
    event: Option<i64>,
    delivery: Option<i64>,
    limit: Option<i64>,
}

async fn deliveries(
    _: Viewer,
    State(state): State<AppState>,
    query: Result<Query<DeliveryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DeliveryLog>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be from 1 to 10000, not {limit}"
        )));
    }
    if let Some(r) = &q.rule {
        bellwether_engine::alerts::check_name(r)
            .map_err(|e| ApiError::bad_request(format!("rule: {e}")))?;
    }
    let attempts = state
        .store
        .alert_attempts(
            &AttemptFilter {
                rule: q.rule.as_deref(),
                event_id: q.event,
                delivery: q.delivery,
            },
            limit,
        )
        .await?;
    Ok(Json(DeliveryLog { attempts }))
}

#[cfg(test)]
mod tests;
