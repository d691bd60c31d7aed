//! The action loop: long-poll the server for actions, run each once, report the result.
//!
//! Idempotence rests on the [`Journal`], a small JSON file in the agent's state directory. An
//! action id is written to it as *started* before the action runs and with its result after,
//! and the file is replaced atomically each time. So:
//!
//! - a server that re-sends an action the agent already ran (after a restart from its store)
//!   gets the stored result again, and nothing runs twice;
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

use bellwether_model::ActionSpec;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::backoff::{Backoff, BackoffPolicy};
use crate::exec::{now_ms, write_atomic, ActionReport, Executor};
use crate::transport::SendError;

/// One action as the server sends it (`GET /api/v1/agent/actions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingAction {
    pub id: u64,
    #[serde(default)]
    pub rollout: String,
    #[serde(default)]
    pub kind: String,
    pub spec: ActionSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionsResponse {
    pub actions: Vec<PendingAction>,
}

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
        id: u64,
        report: &ActionReport,
    ) -> impl Future<Output = Result<(), SendError>>;
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
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
}

/// The most entries kept; past it the lowest (oldest) reported ids are forgotten.
pub const JOURNAL_CAP: usize = 10_000;

/// The persistent record of actions run: id → entry.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    entries: BTreeMap<u64, Entry>,
}

impl Journal {
    /// Opens `STATE_DIR/actions.json`. Entries found *started* but unfinished are closed as
    /// failed: the agent stopped while they ran, and they are never run again.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        let path = state_dir.join("actions.json");
        let shown = path.display().to_string();
        let mut entries: BTreeMap<u64, Entry> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| JournalError::Parse {
                path: shown.clone(),
                source,
            })?,
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
            e.report = Some(ActionReport {
                ok: false,
                exit_code: None,
                error: Some("the agent stopped while the action ran; it was not run again".into()),
                stdout_tail: String::new(),
                stderr_tail: String::new(),
                started_ms: now,
                finished_ms: now,
            });
            e.reported = false;
            changed = true;
        }
        let j = Journal { path, entries };
        if changed {
            j.save()?;
        }
        Ok(j)
    }

    pub fn get(&self, id: u64) -> Option<&Entry> {
        self.entries.get(&id)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Finished results the server has not acknowledged, oldest first.
    pub fn unreported(&self) -> Vec<(u64, ActionReport)> {
        self.entries
            .iter()
            .filter(|(_, e)| !e.reported)
            .filter_map(|(id, e)| e.report.clone().map(|r| (*id, r)))
            .collect()
    }

    pub fn mark_started(&mut self, id: u64, spec: &ActionSpec) -> Result<(), JournalError> {
        self.entries.insert(
            id,
            Entry {
                describe: spec.describe(),
                report: None,
                reported: false,
            },
        );
        self.save()
    }

    pub fn finish(&mut self, id: u64, report: ActionReport) -> Result<(), JournalError> {
        if let Some(e) = self.entries.get_mut(&id) {
            e.report = Some(report);
            e.reported = false;
        }
        self.save()
    }

    pub fn mark_reported(&mut self, id: u64) -> Result<(), JournalError> {
        if let Some(e) = self.entries.get_mut(&id) {
            if e.reported {
                return Ok(());
            }
            e.reported = true;
        }
        self.trim();
        self.save()
    }

    fn trim(&mut self) {
        while self.entries.len() > JOURNAL_CAP {
            let Some(id) = self
                .entries
                .iter()
                .find(|(_, e)| e.reported)
                .map(|(id, _)| *id)
            else {
                break;
            };
            self.entries.remove(&id);
        }
    }

    fn save(&self) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec(&self.entries).expect("journal entries serialise");
        write_atomic(&self.path, &bytes).map_err(|source| JournalError::Write {
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
            if let Some(entry) = self.journal.get(a.id) {
                self.stats.replayed += 1;
                info!(action = a.id, spec = %entry.describe, "The server sent an action already run; reporting its stored result.");
                if let Err(e) = self.journal.finish_if_reported_again(a.id) {
                    error!(error = %e, "Could not update the action journal.");
                }
                continue;
            }
            if let Err(e) = self.journal.mark_started(a.id, &a.spec) {
                // Without the journal the action could run twice: refuse it.
                error!(action = a.id, error = %e, "Could not record the action; not running it.");
                let now = now_ms();
                let report = ActionReport {
                    ok: false,
                    exit_code: None,
                    error: Some(format!(
                        "the agent could not record the action before running it: {e}"
                    )),
                    stdout_tail: String::new(),
                    stderr_tail: String::new(),
                    started_ms: now,
                    finished_ms: now,
                };
                self.transport.report_action(token, a.id, &report).await?;
                continue;
            }
            info!(action = a.id, rollout = %a.rollout, kind = %a.kind, spec = %a.spec.describe(), "Running an action.");
            let report = self.executor.run(&a.spec).await;
            self.stats.ran += 1;
            if report.ok {
                info!(
                    action = a.id,
                    ms = report.finished_ms - report.started_ms,
                    "The action succeeded."
                );
            } else {
                warn!(
                    action = a.id,
                    error = report.error.as_deref().unwrap_or(""),
                    "The action failed."
                );
            }
            if let Err(e) = self.journal.finish(a.id, report) {
                error!(action = a.id, error = %e, "Could not record the action's result.");
            }
        }
        self.send_unreported(token).await
    }

    async fn send_unreported(&mut self, token: &str) -> Result<(), SendError> {
        for (id, report) in self.journal.unreported() {
            match self.transport.report_action(token, id, &report).await {
                Ok(()) => {}
                Err(SendError::Rejected { status, message }) => {
                    // The server will never take it (an action it no longer knows): drop it.
                    warn!(action = id, status, error = %message, "The server refused an action result; dropping it.");
                }
                Err(e) => return Err(e),
            }
            self.stats.reports_sent += 1;
            if let Err(e) = self.journal.mark_reported(id) {
                error!(action = id, error = %e, "Could not record that a result was reported.");
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
    fn finish_if_reported_again(&mut self, id: u64) -> Result<(), JournalError> {
        match self.entries.get_mut(&id) {
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
