//! The action loop: long-poll the server for actions, run each once, report the result.
//!
//! Idempotence rests on the [`Journal`], a small JSON file in the agent's state directory. An
//! action id is written to it with the action's spec as *started* before the action runs and
//! with its result after, and the file is replaced atomically each time. Ids are the server's
//! random 128-bit action ids, never reused across stores or time, and an entry answers only an
//! action with the same id AND the same spec. So:
//!
//! - a server that re-sends an action the agent already ran (after a restart from its store)
//!   gets the stored result again, and nothing runs twice;
//! - an id the journal holds for a different spec is refused (reported with a `refused`
//!   outcome naming both specs), never answered from the journal and never run;
//! - an agent that died while an action ran finds it *started* but unfinished after a restart,
//!   and reports it failed ("the agent stopped while the action ran") rather than run it again;
//! - a result the server did not acknowledge stays *unreported* and is sent again before the
//!   next poll.
//!
//! The loop uses the agent token the sample loop obtained (shared through a
//! `tokio::sync::watch`), so the two loops never enrol against each other.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bellwether_model::wire::ActionOutcome;
use bellwether_model::ActionSpec;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::backoff::{Backoff, BackoffPolicy};
use crate::exec::{now_ms, ActionReport, Executor};
use crate::transport::SendError;

pub mod mirror;
pub mod shadow;

/// One action as the server sends it (`GET /api/v1/agent/actions`): the wire type.
pub use bellwether_model::wire::{ActionsResponse, AgentAction as PendingAction};

/// The two calls of the action loop.
pub trait ActionTransport {
    /// Waits up to `wait` for actions; an empty list when there were none.
    fn poll_actions(
        &mut self,
        agent_token: &str,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<PendingAction>, SendError>>;
    fn report_action(
        &mut self,
        agent_token: &str,
        id: &str,
        report: &ActionReport,
    ) -> impl Future<Output = Result<(), SendError>>;
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The order entries were started in; the oldest reported ones are forgotten first.
    pub seq: u64,
    /// The action as it was sent: a re-sent id answers from this entry only with the same spec.
    pub spec: ActionSpec,
    pub describe: String,
    /// `None` while the action runs (or if the agent died while it ran).
    pub report: Option<ActionReport>,
    pub reported: bool,
}

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("could not read the action journal {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the action journal {path} is not valid: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("could not write the action journal {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the action journal {path} has format version {version}; this agent reads versions 2 and 3"
    )]
    Version { path: String, version: u32 },
}

/// The most entries kept; past it the oldest reported entries are forgotten.
pub const JOURNAL_CAP: usize = 10_000;

/// The journal's format version, in its `version` field. Version 3 writes results with a typed
/// outcome; a version 2 journal (results of the older flat form) is read as it is, and written
/// back as version 3.
pub const JOURNAL_VERSION: u32 = 3;

/// The file: a version, then id → entry.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JournalFile {
    version: u32,
    entries: BTreeMap<String, Entry>,
}

/// What a journal says about an action the server sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup<'a> {
    /// Never seen: run it.
    New,
    /// Seen with the same spec: answer from the entry, never run again.
    Same(&'a Entry),
    /// The id was used for a different action: refuse it, never answer from the journal.
    Conflict(&'a Entry),
}

/// The persistent record of actions run: id → entry.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    entries: BTreeMap<String, Entry>,
    next_seq: u64,
}

impl Journal {
    /// Opens `STATE_DIR/actions.json`. Entries found *started* but unfinished are closed as
    /// failed: the agent stopped while they ran, and they are never run again.
    ///
    /// A journal of the first format (keyed by the server's row ids, which a fresh store
    /// reuses) cannot be matched safely: it is moved aside to `actions.v1.json` with a warning
    /// that says how many entries it held, and the agent starts a new journal.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        let path = state_dir.join("actions.json");
        let shown = path.display().to_string();
        let mut entries: BTreeMap<String, Entry> = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<JournalFile>(&bytes) {
                Ok(f) if f.version == JOURNAL_VERSION || f.version == 2 => f.entries,
                Ok(f) => {
                    return Err(JournalError::Version {
                        path: shown,
                        version: f.version,
                    })
                }
                Err(source) => {
                    // The first format was a bare map of numeric ids; anything else is damage.
                    let Ok(old) =
                        serde_json::from_slice::<BTreeMap<u64, serde_json::Value>>(&bytes)
                    else {
                        return Err(JournalError::Parse {
                            path: shown,
                            source,
                        });
                    };
                    let aside = state_dir.join("actions.v1.json");
                    std::fs::rename(&path, &aside).map_err(|source| JournalError::Write {
                        path: aside.display().to_string(),
                        source,
                    })?;
                    let unreported = old
                        .values()
                        .filter(|e| e["reported"] != serde_json::Value::Bool(true))
                        .count();
                    warn!(path = %shown, moved_to = %aside.display(), entries = old.len(), unreported, "Discarded an action journal of the old format, keyed by the server's row ids, which a new store reuses; its results are not sent.");
                    BTreeMap::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(JournalError::Read {
                    path: shown,
                    source,
                })
            }
        };
        let mut changed = false;
        for (id, e) in entries.iter_mut().filter(|(_, e)| e.report.is_none()) {
            warn!(action = id, spec = %e.describe, "The agent stopped while this action ran; reporting it failed, not running it again.");
            let now = now_ms();
            e.report = Some(ActionReport::new(
                ActionOutcome::Failed {
                    exit_code: None,
                    error: "the agent stopped while the action ran; it was not run again".into(),
                },
                now,
                now,
            ));
            e.reported = false;
            changed = true;
        }
        let next_seq = entries.values().map(|e| e.seq + 1).max().unwrap_or(0);
        let j = Journal {
            path,
            entries,
            next_seq,
        };
        if changed {
            j.save()?;
        }
        Ok(j)
    }

    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// What the journal holds for action `id` sent with `spec`.
    pub fn lookup(&self, id: &str, spec: &ActionSpec) -> Lookup<'_> {
        match self.entries.get(id) {
            None => Lookup::New,
            Some(e) if e.spec == *spec => Lookup::Same(e),
            Some(e) => Lookup::Conflict(e),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Finished results the server has not acknowledged, oldest first.
    pub fn unreported(&self) -> Vec<(String, ActionReport)> {
        let mut out: Vec<(u64, String, ActionReport)> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.reported)
            .filter_map(|(id, e)| e.report.clone().map(|r| (e.seq, id.clone(), r)))
            .collect();
        out.sort_by_key(|(seq, _, _)| *seq);
        out.into_iter().map(|(_, id, r)| (id, r)).collect()
    }

    pub fn mark_started(&mut self, id: &str, spec: &ActionSpec) -> Result<(), JournalError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.insert(
            id.to_string(),
            Entry {
                seq,
                spec: spec.clone(),
                describe: spec.describe(),
                report: None,
                reported: false,
            },
        );
        self.save()
    }

    pub fn finish(&mut self, id: &str, report: ActionReport) -> Result<(), JournalError> {
        if let Some(e) = self.entries.get_mut(id) {
            e.report = Some(report);
            e.reported = false;
        }
        self.save()
    }

    pub fn mark_reported(&mut self, id: &str) -> Result<(), JournalError> {
        if let Some(e) = self.entries.get_mut(id) {
            if e.reported {
                return Ok(());
            }
            e.reported = true;
        }
        self.trim();
        self.save()
    }

    fn trim(&mut self) {
        if self.entries.len() <= JOURNAL_CAP {
            return;
        }
        let mut reported: Vec<(u64, String)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.reported)
            .map(|(id, e)| (e.seq, id.clone()))
            .collect();
        reported.sort();
        let excess = self.entries.len() - JOURNAL_CAP;
        for (_, id) in reported.into_iter().take(excess) {
            self.entries.remove(&id);
        }
    }

    fn save(&self) -> Result<(), JournalError> {
        #[derive(Serialize)]
        struct Out<'a> {
            version: u32,
            entries: &'a BTreeMap<String, Entry>,
        }
        let bytes = serde_json::to_vec(&Out {
            version: JOURNAL_VERSION,
            entries: &self.entries,
        })
        .expect("journal entries serialise");
        // A file of the agent's own, outside any host root: the shared atomic write (temporary
        // file, fsync, rename, directory fsync), not `InRoot`'s.
        let write = bellwether_fs::AtomicWrite::new().create_parent();
        write
            .write(&self.path, &bytes)
            .map_err(|source| JournalError::Write {
                path: self.path.display().to_string(),
                source,
            })
    }
}

/// Settings of the action loop.
#[derive(Debug, Clone)]
pub struct ActionSettings {
    /// How long one long-poll may wait on the server.
    pub wait: Duration,
    pub backoff: BackoffPolicy,
}

impl Default for ActionSettings {
    fn default() -> Self {
        ActionSettings {
            wait: Duration::from_secs(5),
            backoff: BackoffPolicy::default(),
        }
    }
}

/// What the action loop did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActionStats {
    pub polls: u64,
    /// Actions actually run.
    pub ran: u64,
    /// Re-sent actions answered from the journal without running.
    pub replayed: u64,
    /// Actions refused because the journal holds their id for a different action.
    pub refused: u64,
    pub reports_sent: u64,
    pub failed_attempts: u64,
}

pub struct ActionLoop<T> {
    settings: ActionSettings,
    transport: T,
    executor: Executor,
    journal: Journal,
    token: watch::Receiver<Option<String>>,
    backoff: Backoff,
    stats: ActionStats,
}

impl<T: ActionTransport> ActionLoop<T> {
    pub fn new(
        settings: ActionSettings,
        transport: T,
        executor: Executor,
        journal: Journal,
        token: watch::Receiver<Option<String>>,
    ) -> Self {
        let backoff = Backoff::new(settings.backoff);
        ActionLoop {
            settings,
            transport,
            executor,
            journal,
            token,
            backoff,
            stats: ActionStats::default(),
        }
    }

    /// Runs until `shutdown` completes. An action being run when it does is interrupted (its
    /// process killed); the journal then reports it failed after a restart.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> ActionStats {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = self.round() => {}
            }
        }
        self.stats
    }

    async fn current_token(&mut self) -> String {
        loop {
            if let Some(t) = self.token.borrow_and_update().clone() {
                return t;
            }
            if self.token.changed().await.is_err() {
                // The sample loop is gone: nothing will ever enrol again.
                std::future::pending::<()>().await;
            }
        }
    }

    /// One round: send unreported results, poll, run what came. On a failure, wait the backoff
    /// (or for a new token after a 401).
    async fn round(&mut self) {
        let token = self.current_token().await;
        match self.round_with(&token).await {
            Ok(()) => self.backoff.reset(),
            Err(SendError::Unauthorized) => {
                self.stats.failed_attempts += 1;
                // The sample loop re-enrols on its own 401; wait for its new token, bounded.
                let delay = self.backoff.next_delay();
                let _ = tokio::time::timeout(delay, self.token.changed()).await;
            }
            Err(e) => {
                self.stats.failed_attempts += 1;
                let delay = self.backoff.next_delay();
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "Could not reach the server for actions; will retry.");
                tokio::time::sleep(delay).await;
            }
        }
    }

    async fn round_with(&mut self, token: &str) -> Result<(), SendError> {
        self.send_unreported(token).await?;
        let actions = self
            .transport
            .poll_actions(token, self.settings.wait)
            .await?;
        self.stats.polls += 1;
        for a in actions {
            match self.journal.lookup(&a.id, &a.spec) {
                Lookup::New => {}
                Lookup::Same(entry) => {
                    self.stats.replayed += 1;
                    info!(action = %a.id, spec = %entry.describe, "The server sent an action already run; reporting its stored result.");
                    if let Err(e) = self.journal.finish_if_reported_again(&a.id) {
                        error!(error = %e, "Could not update the action journal.");
                    }
                    continue;
                }
                Lookup::Conflict(entry) => {
                    // Not the action the journal knows under this id: neither its stored
                    // result nor a run can be right. Refuse it, and keep the entry.
                    self.stats.refused += 1;
                    let error = format!(
                        "action id {} was already used on this host for a different action ({}); refusing {} rather than answering it from the journal",
                        a.id,
                        entry.describe,
                        a.spec.describe()
                    );
                    error!(action = %a.id, error = %error, "Refused an action whose id the journal holds for another action.");
                    let now = now_ms();
                    let report =
                        ActionReport::new(ActionOutcome::Refused { reason: error }, now, now);
                    self.transport.report_action(token, &a.id, &report).await?;
                    continue;
                }
            }
            if let Err(e) = self.journal.mark_started(&a.id, &a.spec) {
                // Without the journal the action could run twice: refuse it.
                error!(action = %a.id, error = %e, "Could not record the action; not running it.");
                let now = now_ms();
                let reason =
                    format!("the agent could not record the action before running it: {e}");
                let report = ActionReport::new(ActionOutcome::Refused { reason }, now, now);
                self.transport.report_action(token, &a.id, &report).await?;
                continue;
            }
            info!(action = %a.id, rollout = %a.rollout, kind = %a.kind, spec = %a.spec.describe(), "Running an action.");
            let report = self.executor.run(&a.spec).await;
            self.stats.ran += 1;
            if report.is_ok() {
                info!(
                    action = %a.id,
                    ms = report.finished_ms - report.started_ms,
                    "The action succeeded."
                );
            } else {
                warn!(
                    action = %a.id,
                    outcome = %report.outcome,
                    "The action did not succeed."
                );
            }
            if let Err(e) = self.journal.finish(&a.id, report) {
                error!(action = %a.id, error = %e, "Could not record the action's result.");
            }
        }
        self.send_unreported(token).await
    }

    async fn send_unreported(&mut self, token: &str) -> Result<(), SendError> {
        for (id, report) in self.journal.unreported() {
            match self.transport.report_action(token, &id, &report).await {
                Ok(()) => {}
                Err(SendError::Rejected { status, message }) => {
                    // The server will never take it (an action it no longer knows): drop it.
                    warn!(action = %id, status, error = %message, "The server refused an action result; dropping it.");
                }
                Err(e) => return Err(e),
            }
            self.stats.reports_sent += 1;
            if let Err(e) = self.journal.mark_reported(&id) {
                error!(action = %id, error = %e, "Could not record that a result was reported.");
            }
        }
        Ok(())
    }

    /// The journal, for tests and the final log line.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }
}

impl Journal {
    /// A re-sent action: its stored result is sent again on this round.
    fn finish_if_reported_again(&mut self, id: &str) -> Result<(), JournalError> {
        match self.entries.get_mut(id) {
            Some(e) if e.report.is_some() && e.reported => {
                e.reported = false;
                self.save()
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
