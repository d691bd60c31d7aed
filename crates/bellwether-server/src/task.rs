//! Durable change tasks: the one way the server drives every kind of change (rollouts, patches,
//! and the config, mirror and shadow engines as they arrive).
//!
//! A kind implements [`DurableTask`]: its state is a pure engine plus whatever it derives from
//! the store (watchers, features), and the trait says how to restore it from its stored
//! record, how to step it with one [`Input`], and what a step did ([`Step`]: events, dispatches
//! to agents, outcomes, and non-durable effects). Everything else is this module's, the same
//! for every kind:
//!
//! - **One rule for saving** ([`durable::commit`]): a step is taken on a *copy* of the task; the
//!   copy's state with the step's events, dispatches and outcomes (and the action result the
//!   step consumed, marked observed) is stored in one transaction by
//!   [`bellwether_store::Store::save_task_step`], retried with backoff; only once that commits
//!   is the copy kept, are agents woken and are the effects run. A save that keeps failing
//!   *holds* the task: it takes no step but [`Input::Hold`], tried once per interval until the
//!   store takes it; results wait in the store, commands are refused with 503, effect results
//!   are kept in memory and fed after the hold.
//! - **One tokio task per durable task** ([`spawn`]), stepped by its ticks (every
//!   [`DurableTask::tick_every`], with what [`DurableTask::observe`] read), the results agents
//!   store for its actions (routed here by the action's task id, [`Tasks::result_stored`]), the
//!   operators' commands ([`Tasks::command`]) and its effects' results. It ends when the task is
//!   settled ([`DurableTask::is_settled`]) or the registry stops every task
//!   ([`Tasks::stop_all`], for a server that loses its leadership).
//! - **Resume** ([`resume_all`]): on start every unsettled task of every kind in [`kinds`] is
//!   restored from the store and driven on; its stored unobserved results are fed first, and
//!   its pending effects ([`DurableTask::pending_effects`]) are issued again. Dispatches are
//!   never re-queued by a restart: they are in the store once, with the step that made them.
//!
//! Agent actions are durable (queued with the step, delivered until the agent reports);
//! effects are not: an effect is something the server itself does after a committed step (a
//! call to a proxy's admin API), so it must be idempotent, and the task's state must say which
//! effects it still waits on so a restarted server issues them again.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::StatusCode;
use bellwether_model::ActionSpec;
use bellwether_store::{
    ActionRecord, BusyHost, NewAction, NewEvent, NewOutcome, NewTask, StepRecord, TaskRecord,
};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::error::ApiError;
use crate::{model_api, now_ms, AppState};

pub(crate) mod durable;
use durable::SavePolicy;

/// A kind of durable change task. The state is `Clone` because every step is taken on a copy
/// (see the module docs); `Sync` because the runner reads it while it awaits the store.
pub(crate) trait DurableTask: Clone + Send + Sync + Sized + 'static {
    /// The kind's name: stored in `tasks.kind`, prefixing its events (`rollout.host.applied`)
    /// and naming the task in their figures (`{"rollout": "r-…"}`).
    const KIND: &'static str;
    /// An operator's command (pause, abort…), parsed by the kind's routes.
    type Command: Send + 'static;
    /// The answer to a command: the task's status after the step it caused.
    type Status: Send + 'static;
    /// What [`DurableTask::observe`] reads for a tick (samples, drift…).
    type Observed: Send + 'static;
    /// Something the server itself does after a committed step (a proxy admin call); not
    /// durable, so idempotent. [`NoEffect`] for kinds without any.
    type Effect: Send + 'static;
    /// An effect's result, fed back as [`Input::Effect`]. Kept in memory while the task is held.
    type EffectDone: Clone + Send + 'static;

    /// Rebuilds the task from its stored record (its `state` is what [`DurableTask::persist`]
    /// returned at the last committed step).
    fn restore(
        state: AppState,
        rec: TaskRecord,
    ) -> impl Future<Output = Result<Self, ApiError>> + Send;
    fn id(&self) -> &str;
    /// The phase stored with each step (`running`, `completed`…).
    fn phase(&self) -> String;
    /// Final and waiting on nothing (no action in flight, no effect pending): the runner ends
    /// and the task's hosts are free.
    fn is_settled(&self) -> bool;
    /// The state to store; [`DurableTask::restore`] reads it back.
    fn persist(&self) -> serde_json::Value;
    /// How often the task ticks (with an [`DurableTask::observer`]: how often a held task
    /// tries to record its hold).
    fn tick_every(&self) -> Duration;
    /// Reads what the next tick needs (IO is allowed here, changing the task is not). Not
    /// called for a kind with an [`DurableTask::observer`].
    fn observe<'a>(
        &'a self,
        _state: &'a AppState,
    ) -> impl Future<Output = Result<Self::Observed, ApiError>> + Send + 'a {
        async {
            Err(internal(format!(
                "a {} task observes through its own observer, not by ticks",
                Self::KIND
            )))
        }
    }
    /// A kind that observes on its own schedule (the mirror task's prober checks sooner than
    /// its interval when a primary looks silent) returns the loop that does: it sends each
    /// reading through `observe` and is answered once the step is saved. The runner starts it
    /// with itself, ends it with itself, and then takes no ticks of its own but a held task's
    /// retries. `None` (the default): the runner ticks every [`DurableTask::tick_every`] with
    /// what [`DurableTask::observe`] read.
    fn observer(&self, _state: &AppState, _observe: Observe<Self>) -> Option<ObserverLoop> {
        None
    }
    /// Called on the kept state after each saved step, and once when the runner starts: a kind
    /// with an observer tells it here what it needs to know between readings (the mirror
    /// task's prober: which instance is the primary now).
    fn saved(&self) {}
    /// Takes one step (on the runner's copy). Pure: no IO, no clock but `now_ms`.
    fn step(&mut self, input: Input<Self>, now_ms: i64) -> Step<Self::Effect>;
    /// The answer to an operator's command.
    fn status(&self) -> Self::Status;
    /// The effects the state still waits on, issued again when the task is resumed.
    fn pending_effects(&self) -> Vec<Self::Effect> {
        Vec::new()
    }
    /// Carries out one effect; its result is fed back to the task.
    fn run_effect(
        state: AppState,
        effect: Self::Effect,
    ) -> impl Future<Output = Self::EffectDone> + Send + 'static;
}

/// The loop a kind's [`DurableTask::observer`] runs beside its runner.
pub(crate) type ObserverLoop = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The effect type of a kind that has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoEffect {}

/// What a task is stepped with.
pub(crate) enum Input<T: DurableTask> {
    /// The task's interval passed; what [`DurableTask::observe`] read for it.
    Tick(T::Observed),
    /// An agent's stored result of one of the task's actions (`result` holds the whole report,
    /// with its structured `output`). The step is saved with the action marked observed.
    Result(ActionRecord),
    /// An operator's command; the runner answers with [`DurableTask::status`] once saved.
    Command(T::Command),
    /// One of the task's effects finished.
    Effect(T::EffectDone),
    /// The store refused the task's steps; this step records that (a pause with an alert).
    /// `reason` names the store's error.
    Hold { reason: String },
}

/// A dispatch to an agent: `action_id` is the engine's id, unique within the task (the store
/// queues a `(task, action_id)` once, so re-sending a pending dispatch is harmless).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Dispatch {
    pub action_id: u64,
    pub host: String,
    /// The engine's name for it (`apply`, `start_patched`…), shown to the agent and stored.
    pub kind: String,
    /// The `ActionSpec` JSON.
    pub spec: serde_json::Value,
}

impl Dispatch {
    pub(crate) fn new(action_id: u64, host: &str, kind: &str, spec: &ActionSpec) -> Dispatch {
        Dispatch {
            action_id,
            host: host.to_string(),
            kind: kind.to_string(),
            spec: serde_json::to_value(spec).expect("an action spec serialises"),
        }
    }
}

/// What one step did, besides changing the task.
#[derive(Debug)]
pub(crate) struct Step<E> {
    /// Stored as `KIND.EVENT` with the task's id.
    pub events: Vec<NewEvent>,
    /// Queued for the hosts' agents in the step's transaction.
    pub dispatches: Vec<Dispatch>,
    /// Training history, stored in the step's transaction.
    pub outcomes: Vec<NewOutcome>,
    /// Run once the step is saved, each concurrently; their results come back as
    /// [`Input::Effect`].
    pub effects: Vec<E>,
}

impl<E> Default for Step<E> {
    fn default() -> Self {
        Step {
            events: Vec::new(),
            dispatches: Vec::new(),
            outcomes: Vec::new(),
            effects: Vec::new(),
        }
    }
}

/// A new action's wire id: 128 random bits from the OS as 32 lower-case hex characters.
pub(crate) fn new_action_uid() -> String {
    let mut b = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    hex::encode(b)
}

/// The stored record of a step of `task`, which `step` brought to its current state.
pub(crate) fn step_record<T: DurableTask, E>(
    task: &T,
    step: &Step<E>,
    observed_action: Option<i64>,
) -> StepRecord {
    StepRecord {
        phase: task.phase(),
        settled: task.is_settled(),
        state: task.persist(),
        events: step.events.clone(),
        dispatches: step
            .dispatches
            .iter()
            .map(|d| NewAction {
                action_id: d.action_id,
                uid: new_action_uid(),
                host: d.host.clone(),
                kind: d.kind.clone(),
                spec: d.spec.clone(),
            })
            .collect(),
        outcomes: step.outcomes.clone(),
        observed_action,
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

enum Msg<T: DurableTask> {
    Command(T::Command, oneshot::Sender<Result<T::Status, ApiError>>),
    /// A reading of the kind's own observer, taken as a tick; answered with the status after
    /// the saved step (`None`: not saved).
    Observed(T::Observed, oneshot::Sender<Option<T::Status>>),
    /// A result was stored for one of this task's actions.
    Result,
    Effect(T::EffectDone),
}

/// The runner gave no answer: it has stopped (the task settled, or the leadership was lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunnerGone;

/// How a kind's [`DurableTask::observer`] hands its readings to the runner.
pub(crate) struct Observe<T: DurableTask> {
    tx: mpsc::UnboundedSender<Msg<T>>,
}

impl<T: DurableTask> Observe<T> {
    /// Steps the task with `observed`, as a tick, and waits until the step is saved: the
    /// status after it, or `None` when it was not saved (the store refused it; the task is
    /// held and readings are dropped until it takes writes again).
    pub(crate) async fn send(
        &self,
        observed: T::Observed,
    ) -> Result<Option<T::Status>, RunnerGone> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Msg::Observed(observed, reply))
            .map_err(|_| RunnerGone)?;
        answer.await.map_err(|_| RunnerGone)
    }
}

/// What the registry keeps of a running task: its mailbox, without its kind's types.
trait Handle: Send + Sync {
    fn result_stored(&self);
    fn as_any(&self) -> &dyn Any;
}

impl<T: DurableTask> Handle for mpsc::UnboundedSender<Msg<T>> {
    fn result_stored(&self) {
        let _ = self.send(Msg::Result);
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The running tasks of this process (of every kind), and the agents' wake-up bell.
pub struct Tasks {
    running: Mutex<HashMap<String, Box<dyn Handle>>>,
    /// Rung after dispatches are stored, so long-polling agents look again.
    pub(crate) actions: Notify,
    /// Bumped by [`Tasks::stop_all`]: a runner started in an older generation ends.
    generation: watch::Sender<u64>,
    /// Rung whenever a runner ends.
    stopped: Notify,
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks {
            running: Mutex::new(HashMap::new()),
            actions: Notify::new(),
            generation: watch::Sender::new(0),
            stopped: Notify::new(),
        }
    }
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let running: Vec<String> = self.lock().keys().cloned().collect();
        f.debug_struct("Tasks").field("running", &running).finish()
    }
}

impl Tasks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Box<dyn Handle>>> {
        // A panic elsewhere while holding this map leaves it consistent (inserts and removes).
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the runner of task `id` (if it runs here) that a result of one of its actions
    /// was stored.
    pub(crate) fn result_stored(&self, id: &str) {
        if let Some(h) = self.lock().get(id) {
            h.result_stored();
        }
    }

    /// Whether task `id` has a runner in this process.
    pub fn is_running(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// Hands an operator's command to task `id` of kind `T` and waits for the status after
    /// the step it caused (saved). 409 when no runner of that kind drives `id` here.
    pub(crate) async fn command<T: DurableTask>(
        &self,
        id: &str,
        command: T::Command,
    ) -> Result<T::Status, ApiError> {
        let tx = self.lock().get(id).and_then(|h| {
            h.as_any()
                .downcast_ref::<mpsc::UnboundedSender<Msg<T>>>()
                .cloned()
        });
        let kind = T::KIND;
        let Some(tx) = tx else {
            return Err(ApiError::conflict(format!(
                "{kind} {id} is not running in this server process"
            )));
        };
        let (reply, answer) = oneshot::channel();
        tx.send(Msg::Command(command, reply))
            .map_err(|_| ApiError::conflict(format!("{kind} {id} has just finished")))?;
        answer
            .await
            .map_err(|_| ApiError::conflict(format!("{kind} {id} has just finished")))?
    }

    /// Ends every runner of this process at its next wake-up (their tasks stay in the store,
    /// unsettled, for whoever resumes them). For a server that stops leading.
    pub fn stop_all(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Waits until task `id` has no runner in this process (it settled, or was stopped).
    pub async fn wait_stopped(&self, id: &str) {
        loop {
            let bell = self.stopped.notified();
            tokio::pin!(bell);
            bell.as_mut().enable();
            if !self.is_running(id) {
                return;
            }
            bell.await;
        }
    }

    /// Waits until no runner is left in this process (after [`Tasks::stop_all`]).
    pub async fn wait_idle(&self) {
        loop {
            let bell = self.stopped.notified();
            tokio::pin!(bell);
            bell.as_mut().enable();
            if self.lock().is_empty() {
                return;
            }
            bell.await;
        }
    }
}

/// One task's runner: the task, and what the runner knows beside it.
struct Runner<T: DurableTask> {
    state: AppState,
    task: T,
    /// Set while the store refuses the task's saves: the error of the last failed save.
    held: Option<String>,
    save_policy: SavePolicy,
    /// Effect results not yet taken into a saved step (the store refused it).
    deferred: Vec<T::EffectDone>,
    /// The runner's own mailbox, for its effects' results.
    tx: mpsc::UnboundedSender<Msg<T>>,
}

impl<T: DurableTask> Runner<T> {
    /// Steps a copy of the task with `input`, saves it, and keeps it only once the save
    /// committed; then wakes the agents, runs the step's effects and maybe retrains. A save
    /// that keeps failing holds the task (503).
    async fn commit(&mut self, input: Input<T>) -> Result<(), ApiError> {
        let observed_action = match &input {
            Input::Result(a) => Some(a.id),
            _ => None,
        };
        let id = self.task.id().to_string();
        let store = self.state.store.clone();
        let leader = self.state.leader.clone();
        let now = now_ms();
        let saved = durable::commit(
            &mut self.task,
            self.save_policy,
            |t| t.step(input, now),
            |t, step| step_record(t, step, observed_action),
            |rec: StepRecord| {
                let (store, id, leader) = (store.clone(), id.clone(), leader.clone());
                async move {
                    let saved = store.save_task_step(T::KIND, &id, &rec, now_ms()).await;
                    if let Err(bellwether_store::StoreError::Fenced { .. }) = &saved {
                        // Another replica leads: this runner stops at once (its term ends).
                        leader.fenced();
                    }
                    (rec, saved)
                }
            },
        )
        .await;
        match saved {
            Ok((step, rec)) => {
                self.task.saved();
                if !rec.dispatches.is_empty() {
                    self.state.tasks.actions.notify_waiters();
                }
                self.run_effects(step.effects);
                if !rec.outcomes.is_empty() || rec.settled {
                    // A settled task retrains on any new outcome, without waiting for
                    // `--retrain-after` of them.
                    model_api::maybe_retrain(&self.state, rec.settled).await?;
                }
                Ok(())
            }
            Err(unsaved) => {
                let error = unsaved.error.to_string();
                let kind = T::KIND;
                tracing::error!(kind, task = %id, attempts = unsaved.attempts, error = %error, "Task held: the store did not save its step; it records the hold once the store takes writes again.");
                self.held = Some(error.clone());
                Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{kind} {id} is held: the store could not save its step ({error}); it pauses with an alert once the store takes writes again"),
                ))
            }
        }
    }

    fn run_effects(&self, effects: Vec<T::Effect>) {
        for e in effects {
            let (state, tx) = (self.state.clone(), self.tx.clone());
            tokio::spawn(async move {
                let done = T::run_effect(state, e).await;
                let _ = tx.send(Msg::Effect(done));
            });
        }
    }

    /// While held: try to store the hold step, once. When it commits the task takes steps
    /// again, and what waited meanwhile (stored results, effect results) is fed.
    async fn hold(&mut self) -> Result<(), ApiError> {
        let Some(error) = self.held.clone() else {
            return Ok(());
        };
        let reason = format!("the store could not save a step ({error})");
        let once = SavePolicy {
            attempts: 1,
            ..self.save_policy
        };
        let policy = std::mem::replace(&mut self.save_policy, once);
        let r = self.commit(Input::Hold { reason }).await;
        self.save_policy = policy;
        if r.is_ok() {
            self.held = None;
            tracing::warn!(kind = T::KIND, task = %self.task.id(), phase = %self.task.phase(), "The store takes writes again; the task recorded its hold.");
            self.feed_deferred().await?;
            self.feed_results().await?;
        }
        r
    }

    /// Feeds every stored result the task has not consumed yet, oldest first.
    async fn feed_results(&mut self) -> Result<(), ApiError> {
        for a in self.state.store.unobserved_results(self.task.id()).await? {
            self.commit(Input::Result(a)).await?;
        }
        Ok(())
    }

    async fn feed_deferred(&mut self) -> Result<(), ApiError> {
        while !self.deferred.is_empty() {
            let done = self.deferred.remove(0);
            if let Err(e) = self.commit(Input::Effect(done.clone())).await {
                self.deferred.insert(0, done);
                return Err(e);
            }
        }
        Ok(())
    }

    async fn tick(&mut self) -> Result<(), ApiError> {
        let observed = self.task.observe(&self.state).await?;
        self.commit(Input::Tick(observed)).await
    }

    async fn on_message(&mut self, msg: Msg<T>) -> Result<(), ApiError> {
        let kind = T::KIND;
        match msg {
            // While held, results wait in the store (unobserved) for the hold to end.
            Msg::Result if self.held.is_some() => Ok(()),
            Msg::Result => self.feed_results().await,
            Msg::Effect(done) if self.held.is_some() => {
                self.deferred.push(done);
                Ok(())
            }
            Msg::Effect(done) => {
                let r = self.commit(Input::Effect(done.clone())).await;
                if r.is_err() {
                    self.deferred.push(done);
                }
                r
            }
            Msg::Observed(_, reply) if self.held.is_some() => {
                let _ = reply.send(None);
                Ok(())
            }
            Msg::Observed(observed, reply) => {
                let r = self.commit(Input::Tick(observed)).await;
                let _ = reply.send(r.is_ok().then(|| self.task.status()));
                r
            }
            Msg::Command(_, reply) if self.held.is_some() => {
                let id = self.task.id();
                let _ = reply.send(Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{kind} {id} is held: the store could not save its step ({}); try again once the store takes writes", self.held.clone().unwrap_or_default()),
                )));
                Ok(())
            }
            Msg::Command(command, reply) => {
                let r = self.commit(Input::Command(command)).await;
                let answer = r.as_ref().map(|_| self.task.status()).map_err(Clone::clone);
                let _ = reply.send(answer);
                r
            }
        }
    }
}

/// Completes once [`Tasks::stop_all`] was called after generation `mine` was read (when the
/// runner was spawned, not when this is first polled: a stop that comes between the two
/// must still stop it).
async fn stopped(mut generation: watch::Receiver<u64>, mine: u64) {
    if *generation.borrow_and_update() != mine {
        return;
    }
    loop {
        if generation.changed().await.is_err() {
            // The registry is gone with the server: nothing will stop this runner but that.
            return std::future::pending().await;
        }
        let now = *generation.borrow_and_update();
        if now != mine {
            return;
        }
    }
}

/// A spawned task that ends when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn drive<T: DurableTask>(
    mut run: Runner<T>,
    mut rx: mpsc::UnboundedReceiver<Msg<T>>,
    effects: Vec<T::Effect>,
    (generation, mine): (watch::Receiver<u64>, u64),
) {
    let kind = T::KIND;
    let id = run.task.id().to_string();
    let stop = stopped(generation, mine);
    tokio::pin!(stop);
    // The leader's term this runner belongs to: it stops the moment the term ends (the lease
    // lost, or a save refused by the store's fence), leaving the task for the next leader.
    let Some(mut term) = run.state.leader.term() else {
        tracing::info!(kind, task = %id, "Not the leader: the task stays in the store for the leader to drive.");
        run.state.tasks.lock().remove(&id);
        run.state.tasks.stopped.notify_waiters();
        return;
    };
    let mut ticker = tokio::time::interval(run.task.tick_every().max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    run.task.saved();
    // Aborted when this runner ends, whichever way.
    let observer = run
        .task
        .observer(&run.state, Observe { tx: run.tx.clone() })
        .map(|f| AbortOnDrop(tokio::spawn(f)));
    run.run_effects(effects);
    if let Err(e) = run.feed_results().await {
        tracing::error!(kind, task = %id, error = %e, "Could not feed stored action results.");
    }
    // Not when the phase turns final: a task's last actions may report after that.
    while !run.task.is_settled() {
        let r = tokio::select! {
            () = &mut stop => break,
            () = term.lost() => break,
            _ = ticker.tick() => if run.held.is_some() {
                run.hold().await
            } else if observer.is_some() {
                Ok(())
            } else {
                run.tick().await
            },
            msg = rx.recv() => match msg {
                // The runner holds a sender itself: the mailbox never closes while it runs.
                None => break,
                Some(msg) => run.on_message(msg).await,
            },
        };
        if let Err(e) = r {
            tracing::error!(kind, task = %id, error = %e, "Task step failed; retrying on the next interval.");
        }
    }
    if run.task.is_settled() {
        tracing::info!(kind, task = %id, phase = %run.task.phase(), "Task finished: its last action has reported.");
    } else {
        tracing::info!(kind, task = %id, phase = %run.task.phase(), "Task runner stopped; the task stays in the store for the next leader.");
    }
    drop(observer);
    run.state.tasks.lock().remove(&id);
    run.state.tasks.stopped.notify_waiters();
}

/// Starts the runner of `task` (already stored) and issues `effects` (those of its first step,
/// or its pending ones when resumed).
pub(crate) fn spawn<T: DurableTask>(
    state: &AppState,
    task: T,
    effects: Vec<T::Effect>,
) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = mpsc::unbounded_channel::<Msg<T>>();
    state
        .tasks
        .lock()
        .insert(task.id().to_string(), Box::new(tx.clone()));
    let run = Runner {
        state: state.clone(),
        task,
        held: None,
        save_policy: SavePolicy::default(),
        deferred: Vec::new(),
        tx,
    };
    let generation = state.tasks.generation.subscribe();
    let mine = *generation.borrow();
    tokio::spawn(drive(run, rx, effects, (generation, mine)))
}

/// Stores a new task with its first step (taken by the caller: `task` is the state after it)
/// and starts its runner. `Some` (and nothing stored) when one of its hosts is in another
/// unsettled task.
pub(crate) async fn create<T: DurableTask>(
    state: &AppState,
    new: &NewTask,
    task: T,
    first: Step<T::Effect>,
) -> Result<Option<BusyHost>, ApiError> {
    let rec = step_record(&task, &first, None);
    if let Some(busy) = state.store.create_task(new, &rec, now_ms()).await? {
        return Ok(Some(busy));
    }
    if !rec.dispatches.is_empty() {
        state.tasks.actions.notify_waiters();
    }
    spawn(state, task, first.effects);
    Ok(None)
}

/// Restarts the runner of every unsettled task of kind `T` in the store. Returns how many.
pub(crate) async fn resume<T: DurableTask>(state: &AppState) -> Result<usize, ApiError> {
    let mut n = 0;
    for rec in state.store.tasks(Some(T::KIND), true).await? {
        if state.tasks.is_running(&rec.id) {
            continue;
        }
        let (id, phase) = (rec.id.clone(), rec.phase.clone());
        let task = T::restore(state.clone(), rec).await?;
        tracing::info!(kind = T::KIND, task = %id, phase = %phase, "Resuming a task from the store.");
        let effects = task.pending_effects();
        spawn(state, task, effects);
        n += 1;
    }
    Ok(n)
}

type ResumeFn =
    fn(AppState) -> Pin<Box<dyn Future<Output = Result<usize, ApiError>> + Send + 'static>>;

/// One kind the server drives.
pub(crate) struct Kind {
    pub name: &'static str,
    resume: ResumeFn,
}

impl Kind {
    pub(crate) fn of<T: DurableTask>() -> Kind {
        Kind {
            name: T::KIND,
            resume: |state| Box::pin(async move { resume::<T>(&state).await }),
        }
    }
}

/// Every kind this server drives. A new kind adds itself here.
pub(crate) fn kinds() -> Vec<Kind> {
    #[allow(unused_mut)]
    let mut kinds = vec![
        Kind::of::<crate::rollout::RolloutTask>(),
        Kind::of::<crate::patch::PatchTask>(),
        Kind::of::<crate::config::task::ConfigTask>(),
        Kind::of::<crate::mirror::task::MirrorTask>(),
        Kind::of::<crate::shadow::task::ShadowTask>(),
    ];
    // The runner's own tests drive a counter kind, through the same resume as every kind.
    #[cfg(test)]
    kinds.push(Kind::of::<tests::Counter>());
    kinds
}

/// Restarts the runner of every unsettled task of every kind in the store (after a restart,
/// or when this server becomes the leader). A stored task of a kind this server does not
/// know is an error. Returns how many were started.
pub async fn resume_all(state: &AppState) -> Result<usize, ApiError> {
    let kinds = kinds();
    for rec in state.store.tasks(None, true).await? {
        if !kinds.iter().any(|k| k.name == rec.kind) {
            return Err(internal(format!(
                "task {} is of kind {:?}, which this server does not drive",
                rec.id, rec.kind
            )));
        }
    }
    let mut n = 0;
    for k in kinds {
        n += (k.resume)(state.clone()).await?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests;
