//! The generic runner, driven with a tiny kind of its own: a counter that asks its host's agent
//! to count one at a time until it reaches its target, asks for a "ping" effect after its first
//! count, and records every hold.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex as StdMutex, OnceLock};

use bellwether_store::{ActionFinish, EventFilter, StoreConfig};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Connection;

use super::*;
use crate::{Server, ServerConfig};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Counter {
    id: String,
    host: String,
    target: u64,
    count: u64,
    next_action: u64,
    in_flight: BTreeSet<u64>,
    /// The ping effect it waits on (the count it was asked at).
    ping: Option<u64>,
    holds: u64,
    /// Every result it was fed, known or not: the runner must feed each stored result once.
    results_fed: u64,
}

impl Counter {
    fn new(id: &str, host: &str, target: u64) -> Counter {
        Counter {
            id: id.into(),
            host: host.into(),
            target,
            count: 0,
            next_action: 0,
            in_flight: BTreeSet::new(),
            ping: None,
            holds: 0,
            results_fed: 0,
        }
    }
}

fn event(kind: &str, reason: &str, figures: serde_json::Value, now: i64) -> NewEvent {
    NewEvent {
        ts_ms: now,
        kind: kind.into(),
        host: None,
        reason: reason.into(),
        figures,
    }
}

/// Per task id: the gate its ping effects wait for (open unless a test closes it) and how
/// many times its effect ran.
struct EffectControl {
    open: watch::Sender<bool>,
    calls: watch::Sender<u32>,
}

fn effects_of(id: &str) -> (watch::Sender<bool>, watch::Sender<u32>) {
    static ALL: OnceLock<StdMutex<HashMap<String, EffectControl>>> = OnceLock::new();
    let mut all = ALL
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let c = all.entry(id.to_string()).or_insert_with(|| EffectControl {
        open: watch::Sender::new(true),
        calls: watch::Sender::new(0),
    });
    (c.open.clone(), c.calls.clone())
}

impl DurableTask for Counter {
    const KIND: &'static str = "counter";
    /// Raise the target by this much.
    type Command = u64;
    /// (count, target)
    type Status = (u64, u64);
    type Observed = ();
    type Effect = (String, u64);
    type EffectDone = u64;

    async fn restore(_state: AppState, rec: TaskRecord) -> Result<Self, ApiError> {
        serde_json::from_value(rec.state).map_err(internal)
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn phase(&self) -> String {
        if self.count >= self.target {
            "done".into()
        } else {
            "counting".into()
        }
    }

    fn is_settled(&self) -> bool {
        self.count >= self.target && self.in_flight.is_empty() && self.ping.is_none()
    }

    fn persist(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a counter serialises")
    }

    fn tick_every(&self) -> Duration {
        Duration::from_millis(20)
    }

    async fn observe(&self, _state: &AppState) -> Result<(), ApiError> {
        Ok(())
    }

    fn step(&mut self, input: Input<Self>, now: i64) -> Step<(String, u64)> {
        let mut step = Step::default();
        match input {
            Input::Tick(()) => {
                if self.in_flight.is_empty() && self.ping.is_none() && self.count < self.target {
                    self.next_action += 1;
                    self.in_flight.insert(self.next_action);
                    step.dispatches.push(Dispatch {
                        action_id: self.next_action,
                        host: self.host.clone(),
                        kind: "add".into(),
                        spec: json!({"argv": ["true"], "timeout_ms": 1000}),
                    });
                    step.events.push(event(
                        "dispatched",
                        "one more",
                        json!({"action": self.next_action}),
                        now,
                    ));
                }
            }
            Input::Result(a) => {
                self.results_fed += 1;
                if self.in_flight.remove(&a.action_id) {
                    let result = a.result.unwrap_or_default();
                    self.count += result["output"]["add"].as_u64().unwrap_or(0);
                    step.events.push(event(
                        "counted",
                        "the agent counted",
                        json!({"count": self.count, "action": a.action_id}),
                        now,
                    ));
                    if self.count == 1 {
                        self.ping = Some(self.count);
                        step.effects.push((self.id.clone(), self.count));
                    }
                }
            }
            Input::Command(by) => {
                self.target += by;
                step.events.push(event(
                    "raised",
                    "operator",
                    json!({"target": self.target}),
                    now,
                ));
            }
            Input::Effect(n) => {
                if self.ping == Some(n) {
                    self.ping = None;
                    step.events
                        .push(event("pong", "the effect answered", json!({"n": n}), now));
                }
            }
            Input::Hold { reason } => {
                self.holds += 1;
                step.events.push(event("held", &reason, json!({}), now));
            }
        }
        step
    }

    fn status(&self) -> (u64, u64) {
        (self.count, self.target)
    }

    fn pending_effects(&self) -> Vec<(String, u64)> {
        self.ping
            .map(|n| (self.id.clone(), n))
            .into_iter()
            .collect()
    }

    async fn run_effect(_state: AppState, (id, n): (String, u64)) -> u64 {
        let (open, calls) = effects_of(&id);
        calls.send_modify(|c| *c += 1);
        let mut open = open.subscribe();
        let _ = open.wait_for(|o| *o).await;
        n
    }
}

/// Removes a test's data dir when the test ends, passed or failed.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn open(dir: &Path) -> AppState {
    let config = ServerConfig::new(StoreConfig::sqlite_in(dir), Some(dir.to_path_buf()));
    Server::open(config).await.expect("the server opens").state
}

async fn start(state: &AppState, task: Counter) {
    let new = NewTask {
        id: task.id.clone(),
        kind: Counter::KIND.into(),
        model_version: None,
        plan_file: "counter".into(),
        plan_yaml: String::new(),
        hosts: vec![(task.host.clone(), Default::default())],
    };
    let busy = create(state, &new, task, Step::default()).await.unwrap();
    assert_eq!(busy, None);
}

/// The agent of `host`: waits (on the agents' bell) for an open action.
async fn next_action(state: &AppState, host: &str) -> ActionRecord {
    let wait = async {
        loop {
            let bell = state.tasks.actions.notified();
            tokio::pin!(bell);
            bell.as_mut().enable();
            let open = state.store.take_open_actions(host, now_ms()).await.unwrap();
            if let Some(a) = open.into_iter().next() {
                return a;
            }
            bell.await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("no action for {host} within 30 s"))
}

/// The agent reports `a` done, having added `add`; the result goes to the task that
/// dispatched it.
async fn report(state: &AppState, a: &ActionRecord, add: u64) {
    let result = json!({"ok": true, "output": {"add": add}});
    match state
        .store
        .finish_action(&a.uid, &a.host, &result, now_ms())
        .await
        .unwrap()
    {
        Some(ActionFinish::Stored(rec)) => state.tasks.result_stored(&rec.task_id),
        other => panic!("result of {a:?} not stored: {other:?}"),
    }
}

async fn settled(state: &AppState, id: &str) -> Counter {
    tokio::time::timeout(Duration::from_secs(30), state.tasks.wait_stopped(id))
        .await
        .unwrap_or_else(|_| panic!("{id} did not settle within 30 s"));
    let rec = state.store.task(id).await.unwrap().unwrap();
    assert!(rec.settled, "{rec:?}");
    assert_eq!((rec.kind.as_str(), rec.phase.as_str()), ("counter", "done"));
    serde_json::from_value(rec.state).unwrap()
}

async fn event_kinds(state: &AppState, id: &str) -> Vec<String> {
    let filter = EventFilter {
        task: Some(id),
        after_id: Some(0),
        ..EventFilter::default()
    };
    let events = state.store.find_events(&filter, 1000).await.unwrap();
    for e in &events {
        assert_eq!(e.figures["counter"], json!(id), "{e:?}");
        assert_eq!(e.task.as_deref(), Some(id), "{e:?}");
    }
    events.into_iter().map(|e| e.kind).collect()
}

/// Stops every runner of a server's life and waits until they ended.
async fn idle(state: &AppState) {
    state.tasks.stop_all();
    tokio::time::timeout(Duration::from_secs(30), state.tasks.wait_idle())
        .await
        .expect("the runners stop within 30 s");
}

/// Waits until a task's effect ran `n` times.
async fn calls_reach(seen: &mut watch::Receiver<u32>, n: u32) {
    tokio::time::timeout(Duration::from_secs(30), seen.wait_for(|c| *c >= n))
        .await
        .unwrap_or_else(|_| panic!("the effect did not run {n} times within 30 s"))
        .unwrap();
}

fn action_ids(actions: &[ActionRecord]) -> Vec<u64> {
    actions.iter().map(|a| a.action_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_dispatch_take_their_own_results_and_commands_and_settle() {
    let (_, dir) = bellwether_store::testing::fresh_sqlite();
    let _cleanup = RemoveOnDrop(dir.clone());
    let state = open(&dir).await;
    start(&state, Counter::new("c-1", "h1", 2)).await;
    start(&state, Counter::new("c-2", "h2", 1)).await;
    // A host is in one unsettled task at a time, whatever the kind.
    let again = NewTask {
        id: "c-3".into(),
        kind: Counter::KIND.into(),
        model_version: None,
        plan_file: "counter".into(),
        plan_yaml: String::new(),
        hosts: vec![("h1".into(), Default::default())],
    };
    let busy = create(
        &state,
        &again,
        Counter::new("c-3", "h1", 1),
        Step::default(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!((busy.kind.as_str(), busy.task.as_str()), ("counter", "c-1"));
    assert!(!state.tasks.is_running("c-3"));

    let a1 = next_action(&state, "h1").await;
    let b1 = next_action(&state, "h2").await;
    assert_eq!((a1.task_id.as_str(), b1.task_id.as_str()), ("c-1", "c-2"));
    // Each result reaches the task that dispatched it.
    report(&state, &b1, 1).await;
    report(&state, &a1, 1).await;
    // An operator raises c-1's target; the answer is its status after the saved step.
    let (count, target) = state.tasks.command::<Counter>("c-1", 1).await.unwrap();
    assert_eq!(target, 3);
    assert!(count <= 1);
    for _ in 0..2 {
        let a = next_action(&state, "h1").await;
        report(&state, &a, 1).await;
    }
    let c1 = settled(&state, "c-1").await;
    let c2 = settled(&state, "c-2").await;
    assert_eq!((c1.count, c1.target, c2.count, c2.target), (3, 3, 1, 1));
    assert_eq!((c1.results_fed, c2.results_fed), (3, 1));
    let actions = state.store.task_actions("c-1").await.unwrap();
    assert_eq!(action_ids(&actions), [1, 2, 3]);
    assert!(actions.iter().all(|a| a.observed), "{actions:?}");
    let kinds = event_kinds(&state, "c-1").await;
    assert_eq!(kinds.iter().filter(|k| *k == "counter.counted").count(), 3);
    assert_eq!(kinds.iter().filter(|k| *k == "counter.pong").count(), 1);
    assert_eq!(kinds.iter().filter(|k| *k == "counter.raised").count(), 1);
    // A command to a settled task is refused.
    let err = state.tasks.command::<Counter>("c-1", 1).await.unwrap_err();
    assert_eq!(err.status, StatusCode::CONFLICT);
}

/// A server stopped at any point and another opened on its store carries every task on:
/// the pending effect is issued again, the in-flight action is not dispatched again (the
/// agent gets the one queued, with its uid), and no result is consumed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_resumes_tasks_without_repeating_a_dispatch() {
    let (_, dir) = bellwether_store::testing::fresh_sqlite();
    let _cleanup = RemoveOnDrop(dir.clone());
    let id = "c-restart";
    let (gate, calls) = effects_of(id);
    gate.send_replace(false);

    // First life: one count, then the ping effect hangs.
    let first = open(&dir).await;
    start(&first, Counter::new(id, "h1", 3)).await;
    let a1 = next_action(&first, "h1").await;
    report(&first, &a1, 1).await;
    let mut seen = calls.subscribe();
    calls_reach(&mut seen, 1).await;
    idle(&first).await;

    // Second life: resumed by the server's start, which issues the ping again.
    let second = open(&dir).await;
    assert!(second.tasks.is_running(id));
    calls_reach(&mut seen, 2).await;
    gate.send_replace(true);
    let a2 = next_action(&second, "h1").await;
    assert_eq!(a2.action_id, 2);
    idle(&second).await;

    // Third life: a2 is still in flight; nothing new is dispatched, the agent gets a2 again.
    let third = open(&dir).await;
    let again = next_action(&third, "h1").await;
    assert_eq!((again.action_id, &again.uid), (2, &a2.uid));
    report(&third, &again, 1).await;
    let a3 = next_action(&third, "h1").await;
    assert_eq!(a3.action_id, 3);
    report(&third, &a3, 1).await;
    let done = settled(&third, id).await;
    assert_eq!((done.count, done.holds, done.results_fed), (3, 0, 3));
    assert_eq!(*calls.borrow(), 2, "one ping per life that waited on it");
    let actions = third.store.task_actions(id).await.unwrap();
    assert_eq!(action_ids(&actions), [1, 2, 3]);
    let kinds = event_kinds(&third, id).await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "counter.dispatched").count(),
        3
    );
    assert_eq!(kinds.iter().filter(|k| *k == "counter.counted").count(), 3);
    assert_eq!(kinds.iter().filter(|k| *k == "counter.pong").count(), 1);
}

/// A store that refuses the task's saves holds it after the bounded retries (commands answer
/// 503 at once, results wait in the store), and once it takes writes again the hold is
/// recorded first, then the waiting result is fed; nothing is dispatched twice.
///
/// On the real clock: tokio's paused clock cannot drive a real SQLite pool (while a query
/// runs on SQLite's thread the runtime looks idle, the clock jumps and the pool's connect
/// timeout fires: `PoolTimedOut`). The retry schedule itself is checked on the paused clock
/// in `durable`'s tests; here the hold waits out the same six attempts, 3.1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_held_while_the_store_refuses_its_steps() {
    let (_, dir) = bellwether_store::testing::fresh_sqlite();
    let _cleanup = RemoveOnDrop(dir.clone());
    let state = open(&dir).await;
    let url = format!("sqlite://{}", dir.join("bellwether.db").display());
    let mut raw = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let id = "c-held";
    start(&state, Counter::new(id, "h1", 2)).await;
    let a1 = next_action(&state, "h1").await;

    // The store refuses every step of a task from now on, as a full disk would.
    sqlx::query("CREATE TRIGGER refuse_steps BEFORE UPDATE ON tasks BEGIN SELECT RAISE(ABORT, 'database or disk is full (test)'); END")
        .execute(&mut raw)
        .await
        .unwrap();
    let before = tokio::time::Instant::now();
    report(&state, &a1, 1).await;
    // Queued behind the result's step: answered once the retries gave up.
    let err = state.tasks.command::<Counter>(id, 1).await.unwrap_err();
    assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE, "{err}");
    assert!(err.message.contains("is held"), "{err}");
    assert!(
        before.elapsed() >= Duration::from_millis(3100),
        "six attempts take 3.1 s: {:?}",
        before.elapsed()
    );
    // Held: a command is refused at once; the result waits, unconsumed.
    let at = tokio::time::Instant::now();
    let err = state.tasks.command::<Counter>(id, 1).await.unwrap_err();
    assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE, "{err}");
    assert!(
        at.elapsed() < Duration::from_millis(100),
        "{:?}",
        at.elapsed()
    );
    assert_eq!(state.store.unobserved_results(id).await.unwrap().len(), 1);
    let stored: Counter =
        serde_json::from_value(state.store.task(id).await.unwrap().unwrap().state).unwrap();
    assert_eq!((stored.count, stored.holds), (0, 0));

    sqlx::query("DROP TRIGGER refuse_steps")
        .execute(&mut raw)
        .await
        .unwrap();
    raw.close().await.unwrap();
    let a2 = next_action(&state, "h1").await;
    assert_eq!(a2.action_id, 2);
    report(&state, &a2, 1).await;
    let done = settled(&state, id).await;
    assert_eq!((done.count, done.holds, done.results_fed), (2, 1, 2));
    let kinds = event_kinds(&state, id).await;
    let held = kinds.iter().position(|k| k == "counter.held").unwrap();
    let counted = kinds.iter().position(|k| k == "counter.counted").unwrap();
    assert!(
        held < counted,
        "the hold is recorded before the waiting result: {kinds:?}"
    );
    assert_eq!(kinds.iter().filter(|k| *k == "counter.held").count(), 1);
    assert_eq!(
        action_ids(&state.store.task_actions(id).await.unwrap()),
        [1, 2]
    );
}

/// A kind that observes on its own schedule: its observer sends readings 1, 2, 3… until the
/// runner stops answering, and records each answer; `saved` publishes the count it stored.
#[derive(Clone)]
struct Watcher {
    id: String,
    readings: Vec<u64>,
    settle_after: usize,
    /// What `saved` published: the readings stored so far (shared by the runner's copies).
    published: Arc<watch::Sender<usize>>,
    /// Each answer the observer got, with what was published when it got it.
    answers: Answers,
}

/// Each answer a watcher's observer got, with what `saved` had published by then.
type Answers = Arc<StdMutex<Vec<(Option<usize>, usize)>>>;

impl DurableTask for Watcher {
    const KIND: &'static str = "watcher";
    type Command = ();
    type Status = usize;
    type Observed = u64;
    type Effect = NoEffect;
    type EffectDone = ();

    async fn restore(_state: AppState, _rec: TaskRecord) -> Result<Self, ApiError> {
        Err(internal("a watcher is never resumed"))
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn phase(&self) -> String {
        "watching".into()
    }

    fn is_settled(&self) -> bool {
        self.readings.len() >= self.settle_after
    }

    fn persist(&self) -> serde_json::Value {
        json!({ "readings": self.readings })
    }

    /// Short: a runner that ticked a kind with an observer would step it with reading 0.
    fn tick_every(&self) -> Duration {
        Duration::from_millis(5)
    }

    async fn observe(&self, _state: &AppState) -> Result<u64, ApiError> {
        Ok(0)
    }

    fn observer(&self, _state: &AppState, observe: Observe<Self>) -> Option<ObserverLoop> {
        let (published, answers) = (self.published.subscribe(), self.answers.clone());
        Some(Box::pin(async move {
            for reading in 1.. {
                let Ok(status) = observe.send(reading).await else {
                    return;
                };
                let seen = *published.borrow();
                answers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((status, seen));
            }
        }))
    }

    fn saved(&self) {
        self.published.send_replace(self.readings.len());
    }

    fn step(&mut self, input: Input<Self>, _now: i64) -> Step<NoEffect> {
        if let Input::Tick(reading) = input {
            self.readings.push(reading);
        }
        Step::default()
    }

    fn status(&self) -> usize {
        self.readings.len()
    }

    async fn run_effect(_state: AppState, effect: NoEffect) {
        match effect {}
    }
}

#[tokio::test]
async fn a_kind_with_an_observer_is_stepped_by_its_readings_not_by_ticks() {
    let dir = std::env::temp_dir().join(format!("bw-task-observer-{}", std::process::id()));
    let _rm = RemoveOnDrop(dir.clone());
    std::fs::create_dir_all(&dir).unwrap();
    let state = open(&dir).await;
    let task = Watcher {
        id: "w-1".into(),
        readings: Vec::new(),
        settle_after: 5,
        published: Arc::new(watch::Sender::new(usize::MAX)),
        answers: Arc::default(),
    };
    let answers = task.answers.clone();
    let new = NewTask {
        id: task.id.clone(),
        kind: Watcher::KIND.into(),
        model_version: None,
        plan_file: "watcher".into(),
        plan_yaml: String::new(),
        hosts: Vec::new(),
    };
    let busy = create(&state, &new, task, Step::default()).await.unwrap();
    assert_eq!(busy, None);
    tokio::time::timeout(Duration::from_secs(30), state.tasks.wait_stopped("w-1"))
        .await
        .expect("the watcher settles within 30 s");

    // Every reading was one saved step, in order, and no tick stepped it (its reading is 0).
    let rec = state.store.task("w-1").await.unwrap().unwrap();
    assert!(rec.settled, "{rec:?}");
    assert_eq!(rec.state["readings"], json!([1, 2, 3, 4, 5]));
    // Each answer is the status after that reading's saved step, and `saved` had published
    // it by then. The observer sends a reading only once the last was answered, so it holds
    // at least the first four answers; the fifth may be cut off, as the runner that settles
    // ends its observer.
    let answers = answers.lock().unwrap().clone();
    assert!(answers.len() >= 4, "{answers:?}");
    assert_eq!(
        answers,
        (1..=answers.len())
            .map(|n| (Some(n), n))
            .collect::<Vec<_>>(),
        "the observer's answers"
    );
}
