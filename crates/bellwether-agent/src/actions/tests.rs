//! The action loop against a scripted fake server (paused clock) and an HTTP fake.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use super::*;

/// The parts of a report the tests look at.
trait ReportView {
    fn error(&self) -> Option<&str>;
    fn exit_code(&self) -> Option<i32>;
}

impl ReportView for ActionReport {
    fn error(&self) -> Option<&str> {
        match &self.outcome {
            ActionOutcome::Failed { error, .. } => Some(error),
            ActionOutcome::Refused { reason } => Some(reason),
            ActionOutcome::Ok | ActionOutcome::TimedOut { .. } => None,
        }
    }

    fn exit_code(&self) -> Option<i32> {
        match &self.outcome {
            ActionOutcome::Ok => Some(0),
            ActionOutcome::Failed { exit_code, .. } => *exit_code,
            _ => None,
        }
    }
}

#[derive(Default)]
struct Fake {
    /// Batches handed out by successive polls; an empty poll waits `wait`.
    batches: VecDeque<Vec<PendingAction>>,
    /// Reports fail while this is positive (each failure decrements it).
    fail_reports: u32,
    reports: Vec<(String, ActionReport)>,
}

#[derive(Clone, Default)]
struct FakeTransport(Rc<RefCell<Fake>>);

impl ActionTransport for FakeTransport {
    async fn poll_actions(
        &mut self,
        token: &str,
        wait: Duration,
    ) -> Result<Vec<PendingAction>, SendError> {
        assert_eq!(token, "agent-token");
        let batch = self.0.borrow_mut().batches.pop_front();
        match batch {
            Some(b) => Ok(b),
            None => {
                tokio::time::sleep(wait).await;
                Ok(Vec::new())
            }
        }
    }

    async fn report_action(
        &mut self,
        _token: &str,
        id: &str,
        report: &ActionReport,
    ) -> Result<(), SendError> {
        let mut f = self.0.borrow_mut();
        if f.fail_reports > 0 {
            f.fail_reports -= 1;
            return Err(SendError::Unavailable("connection refused".into()));
        }
        f.reports.push((id.to_string(), report.clone()));
        Ok(())
    }
}

/// A wire id of the server's shape (32 hex characters) made from a small number.
fn uid(n: u64) -> String {
    format!("{n:032x}")
}

fn version(id: u64, v: &str) -> PendingAction {
    PendingAction::new(
        uid(id),
        "r-1",
        "apply",
        ActionSpec::SetServiceVersion {
            version: v.into(),
            timeout_ms: None,
        },
    )
}

struct Host {
    _dir: tempfile::TempDir,
    root: PathBuf,
    state: PathBuf,
}

fn host() -> Host {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&root).unwrap();
    Host {
        _dir: dir,
        root,
        state,
    }
}

async fn run_for(h: &Host, t: &FakeTransport, secs: u64) -> ActionStats {
    let ex = Executor::new(h.root.clone(), &h.state, &[], None).unwrap();
    let journal = Journal::open(&h.state).unwrap();
    let (_tx, rx) = watch::channel(Some("agent-token".to_string()));
    let settings = ActionSettings {
        wait: Duration::from_secs(5),
        backoff: BackoffPolicy::default(),
    };
    let lp = ActionLoop::new(settings, t.clone(), ex, journal, rx);
    lp.run(tokio::time::sleep(Duration::from_secs(secs))).await
}

fn version_file(h: &Host) -> String {
    std::fs::read_to_string(h.root.join(crate::exec::VERSION_FILE)).unwrap()
}

#[tokio::test(start_paused = true)]
async fn each_action_runs_once_and_a_resent_one_gets_its_stored_result() {
    let h = host();
    let t = FakeTransport::default();
    t.0.borrow_mut().batches = VecDeque::from([vec![version(1, "2")], vec![version(1, "2")]]);
    let stats = run_for(&h, &t, 20).await;
    assert_eq!((stats.ran, stats.replayed), (1, 1), "{stats:?}");
    assert_eq!(version_file(&h), "2\n");
    let reports = &t.0.borrow().reports;
    assert_eq!(reports.len(), 2, "the re-sent action is answered again");
    assert_eq!(reports[0], reports[1], "with the same stored result");
    assert!(reports[0].1.is_ok());
}

#[tokio::test(start_paused = true)]
async fn the_journal_survives_a_restart_so_nothing_runs_twice() {
    let h = host();
    let t = FakeTransport::default();
    t.0.borrow_mut().batches = VecDeque::from([vec![version(7, "2")]]);
    run_for(&h, &t, 10).await;
    // Someone changes the version by hand; a restarted agent gets action 7 again.
    std::fs::write(h.root.join(crate::exec::VERSION_FILE), "1\n").unwrap();
    t.0.borrow_mut().batches = VecDeque::from([vec![version(7, "2"), version(8, "3")]]);
    let stats = run_for(&h, &t, 10).await;
    assert_eq!((stats.ran, stats.replayed), (1, 1), "{stats:?}");
    assert_eq!(version_file(&h), "3\n", "only action 8 ran");
    let ids: Vec<String> =
        t.0.borrow()
            .reports
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
    assert_eq!(ids, vec![uid(7), uid(7), uid(8)]);
}

#[tokio::test(start_paused = true)]
async fn an_action_interrupted_by_an_agent_stop_is_reported_failed_not_rerun() {
    let h = host();
    let mut j = Journal::open(&h.state).unwrap();
    j.mark_started(&uid(3), &version(3, "2").spec).unwrap();
    drop(j);
    let t = FakeTransport::default();
    t.0.borrow_mut().batches = VecDeque::from([vec![version(3, "2")]]);
    let stats = run_for(&h, &t, 10).await;
    assert_eq!(stats.ran, 0);
    assert!(
        !h.root.join(crate::exec::VERSION_FILE).exists(),
        "never run again"
    );
    let reports = &t.0.borrow().reports;
    assert_eq!(reports[0].0, uid(3));
    assert_eq!(
        reports[0].1.error(),
        Some("the agent stopped while the action ran; it was not run again")
    );
}

#[tokio::test(start_paused = true)]
async fn results_the_server_missed_are_sent_again() {
    let h = host();
    let t = FakeTransport::default();
    {
        let mut f = t.0.borrow_mut();
        f.batches = VecDeque::from([vec![version(1, "2")]]);
        f.fail_reports = 2;
    }
    let stats = run_for(&h, &t, 30).await;
    assert_eq!(stats.ran, 1);
    assert_eq!(stats.failed_attempts, 2);
    assert_eq!(t.0.borrow().reports.len(), 1);
    let j = Journal::open(&h.state).unwrap();
    assert!(j.unreported().is_empty());
    assert!(j.get(&uid(1)).unwrap().reported);
}

#[tokio::test(start_paused = true)]
async fn the_loop_waits_for_the_sample_loops_token() {
    let h = host();
    let t = FakeTransport::default();
    t.0.borrow_mut().batches = VecDeque::from([vec![version(1, "2")]]);
    let ex = Executor::new(h.root.clone(), &h.state, &[], None).unwrap();
    let (tx, rx) = watch::channel(None);
    let lp = ActionLoop::new(
        ActionSettings::default(),
        t.clone(),
        ex,
        Journal::open(&h.state).unwrap(),
        rx,
    );
    let handle = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(t.0.borrow().reports.is_empty(), "no poll before a token");
        tx.send_replace(Some("agent-token".into()));
    };
    let (stats, ()) = tokio::join!(lp.run(tokio::time::sleep(Duration::from_secs(10))), handle);
    assert_eq!(stats.ran, 1);
}

#[tokio::test(start_paused = true)]
async fn an_id_reused_for_another_action_is_refused_never_answered_from_the_journal() {
    // The issue's scenario in miniature: the journal holds id X as "set version 2, ok"; a
    // server on a fresh store sends X again for "set version 3". Answering from the journal
    // would report version 3 while the host stays on 2.
    let h = host();
    let t = FakeTransport::default();
    t.0.borrow_mut().batches = VecDeque::from([vec![version(1, "2")]]);
    run_for(&h, &t, 10).await;
    assert_eq!(version_file(&h), "2\n");
    t.0.borrow_mut().reports.clear();
    t.0.borrow_mut().batches = VecDeque::from([vec![version(1, "3")]]);
    let stats = run_for(&h, &t, 10).await;
    assert_eq!(
        (stats.ran, stats.replayed, stats.refused),
        (0, 0, 1),
        "{stats:?}"
    );
    assert_eq!(version_file(&h), "2\n", "nothing ran");
    let reports = &t.0.borrow().reports;
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(
        !reports[0].1.is_ok(),
        "never the stored success: {reports:?}"
    );
    let error = reports[0].1.error().unwrap();
    assert!(
        error.contains("already used on this host for a different action (set_service_version 2)")
            && error.contains("refusing set_service_version 3"),
        "{error}"
    );
    // The journal still answers the original action with its own result.
    let j = Journal::open(&h.state).unwrap();
    assert!(
        matches!(j.lookup(&uid(1), &version(1, "2").spec), Lookup::Same(e) if e.report.as_ref().is_some_and(|r| r.is_ok()))
    );
}

#[test]
fn an_old_format_journal_is_moved_aside_with_a_warning_not_matched() {
    let h = host();
    std::fs::create_dir_all(&h.state).unwrap();
    let old = r#"{"7":{"describe":"set_service_version 2","report":{"ok":true,"exit_code":0,"error":null,"stdout_tail":"","stderr_tail":"","started_ms":1,"finished_ms":2},"reported":true}}"#;
    std::fs::write(h.state.join("actions.json"), old).unwrap();
    let j = Journal::open(&h.state).unwrap();
    assert!(j.is_empty(), "row-id entries are never matched");
    assert_eq!(
        std::fs::read_to_string(h.state.join("actions.v1.json")).unwrap(),
        old,
        "kept aside for a human"
    );
    assert!(!h.state.join("actions.json").exists());
    // A journal of an unknown version is an error, not a silent restart.
    std::fs::write(
        h.state.join("actions.json"),
        r#"{"version":9,"entries":{}}"#,
    )
    .unwrap();
    let err = Journal::open(&h.state).unwrap_err().to_string();
    assert!(err.contains("actions.json has format version 9"), "{err}");
}

/// A journal written before the typed outcome (version 2, results in the flat form) is read
/// as it is: its results keep their meaning, and an unreported one is sent in the typed form.
#[tokio::test(start_paused = true)]
async fn a_version_2_journal_keeps_its_results() {
    let h = host();
    std::fs::create_dir_all(&h.state).unwrap();
    let v2 = format!(
        r#"{{"version":2,"entries":{{
        "{a}":{{"seq":0,"spec":{{"builtin":"set_service_version","version":"2"}},"describe":"set_service_version 2",
               "report":{{"ok":true,"exit_code":null,"error":null,"stdout_tail":"","stderr_tail":"","started_ms":1,"finished_ms":2}},"reported":true}},
        "{b}":{{"seq":1,"spec":{{"argv":["sleep","9"],"timeout_ms":100}},"describe":"argv [sleep 9]",
               "report":{{"ok":false,"exit_code":null,"error":"timed out after 100 ms; \"sleep\" was killed","stdout_tail":"","stderr_tail":"","started_ms":1,"finished_ms":102}},"reported":false}}}}}}"#,
        a = uid(1),
        b = uid(2)
    );
    std::fs::write(h.state.join("actions.json"), v2).unwrap();
    let j = Journal::open(&h.state).unwrap();
    assert_eq!(j.len(), 2);
    assert!(j.get(&uid(1)).unwrap().report.as_ref().unwrap().is_ok());
    let t = FakeTransport::default();
    // The server re-sends action 1: answered from the journal, never run.
    t.0.borrow_mut().batches = VecDeque::from([vec![version(1, "2")]]);
    let stats = run_for(&h, &t, 10).await;
    assert_eq!((stats.ran, stats.replayed), (0, 1));
    assert!(!h.root.join(crate::exec::VERSION_FILE).exists());
    let reports = &t.0.borrow().reports;
    assert_eq!(reports[0].0, uid(2));
    assert_eq!(
        reports[0].1.outcome,
        ActionOutcome::TimedOut { after_ms: 100 }
    );
    assert_eq!(reports[1].0, uid(1));
    assert!(reports[1].1.is_ok());
    let text = std::fs::read_to_string(h.state.join("actions.json")).unwrap();
    assert!(text.starts_with(r#"{"version":3,"#), "{text}");
    assert!(
        text.contains(r#""outcome":{"status":"timed_out","after_ms":100}"#),
        "{text}"
    );
}

#[test]
fn a_corrupt_journal_is_an_error_naming_the_file() {
    let h = host();
    std::fs::create_dir_all(&h.state).unwrap();
    std::fs::write(h.state.join("actions.json"), "{not json").unwrap();
    let err = Journal::open(&h.state).unwrap_err().to_string();
    assert!(
        err.starts_with("the action journal ") && err.contains("actions.json is not valid"),
        "{err}"
    );
}

/// The HTTP side: `HttpTransport` against a small axum stand-in for the two endpoints.
mod http {
    use super::*;
    use std::sync::{Arc, Mutex};

    use axum::extract::{Path as UrlPath, Query, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::Json;

    #[derive(Default)]
    struct Server {
        queue: Mutex<Vec<PendingAction>>,
        results: Mutex<Vec<(String, ActionReport)>>,
        waits: Mutex<Vec<u64>>,
        got: tokio::sync::Notify,
    }

    #[derive(serde::Deserialize)]
    struct Wait {
        wait_ms: u64,
    }

    fn authorised(h: &HeaderMap) -> bool {
        h.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer agent-token")
    }

    async fn actions(
        State(s): State<Arc<Server>>,
        h: HeaderMap,
        Query(w): Query<Wait>,
    ) -> Result<Json<ActionsResponse>, StatusCode> {
        if !authorised(&h) {
            return Err(StatusCode::UNAUTHORIZED);
        }
        s.waits.lock().unwrap().push(w.wait_ms);
        let actions = std::mem::take(&mut *s.queue.lock().unwrap());
        if actions.is_empty() {
            // A long-poll that nothing wakes: it answers empty after the wait.
            tokio::time::sleep(Duration::from_millis(w.wait_ms)).await;
        }
        Ok(Json(ActionsResponse { actions }))
    }

    async fn result(
        State(s): State<Arc<Server>>,
        h: HeaderMap,
        UrlPath(id): UrlPath<String>,
        Json(r): Json<ActionReport>,
    ) -> StatusCode {
        if !authorised(&h) {
            return StatusCode::UNAUTHORIZED;
        }
        s.results.lock().unwrap().push((id, r));
        s.got.notify_one();
        StatusCode::NO_CONTENT
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_transport_polls_runs_and_reports() {
        let h = host();
        let server = Arc::new(Server::default());
        server.queue.lock().unwrap().push(PendingAction::new(
            uid(41),
            "r-1",
            "apply",
            ActionSpec::Argv {
                argv: vec!["echo".into(), "applied".into()],
                timeout_ms: 5_000,
            },
        ));
        let app = axum::Router::new()
            .route("/api/v1/agent/actions", axum::routing::get(actions))
            .route(
                "/api/v1/agent/actions/{id}/result",
                axum::routing::post(result),
            )
            .with_state(server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let transport =
            crate::HttpTransport::new(&format!("http://{addr}"), "enrol", Duration::from_secs(2))
                .unwrap();
        let ex = Executor::new(h.root.clone(), &h.state, &[], None).unwrap();
        let (_tx, rx) = watch::channel(Some("agent-token".to_string()));
        let settings = ActionSettings {
            wait: Duration::from_millis(200),
            backoff: BackoffPolicy::default(),
        };
        let lp = ActionLoop::new(
            settings,
            transport,
            ex,
            Journal::open(&h.state).unwrap(),
            rx,
        );
        let stop = server.clone();
        let stats = lp.run(async move { stop.got.notified().await }).await;
        assert_eq!(stats.ran, 1);
        let results = server.results.lock().unwrap();
        assert_eq!(results.len(), 1);
        let (id, r) = &results[0];
        assert_eq!(*id, uid(41));
        assert!(r.is_ok() && r.exit_code() == Some(0), "{r:?}");
        assert_eq!(r.stdout_tail, "applied\n");
        assert_eq!(server.waits.lock().unwrap()[0], 200, "wait_ms is passed on");
    }

    /// A server that hands out `queue` once, then answers every result with 503 naming
    /// `leader` (a follower that lost its leader), as a server on its way out would.
    async fn follower_then_gone(
        queue: Vec<PendingAction>,
        leader: String,
        results_seen: Arc<Mutex<u32>>,
    ) -> String {
        let queue = Arc::new(Mutex::new(queue));
        let app = axum::Router::new()
            .route(
                "/api/v1/agent/actions",
                axum::routing::get(move || {
                    let queue = queue.clone();
                    async move {
                        let actions = std::mem::take(&mut *queue.lock().unwrap());
                        Json(ActionsResponse { actions })
                    }
                }),
            )
            .route(
                "/api/v1/agent/actions/{id}/result",
                axum::routing::post(move || {
                    let (seen, leader) = (results_seen.clone(), leader.clone());
                    async move {
                        *seen.lock().unwrap() += 1;
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            [("x-bellwether-leader", leader)],
                            "no leader",
                        )
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    /// The result of an action taken from one server goes to the next when the first cannot
    /// take it; the action runs once and its result is stored once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_result_fails_over_and_nothing_runs_or_reports_twice() {
        let h = host();
        let second = Arc::new(Server::default());
        let app = axum::Router::new()
            .route("/api/v1/agent/actions", axum::routing::get(actions))
            .route(
                "/api/v1/agent/actions/{id}/result",
                axum::routing::post(result),
            )
            .with_state(second.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let second_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let refused = Arc::new(Mutex::new(0));
        let first_url =
            follower_then_gone(vec![version(5, "2")], second_url.clone(), refused.clone()).await;

        let transport = crate::HttpTransport::new(
            &format!("{first_url},{second_url}"),
            "enrol",
            Duration::from_secs(2),
        )
        .unwrap();
        let ex = Executor::new(h.root.clone(), &h.state, &[], None).unwrap();
        let (_tx, rx) = watch::channel(Some("agent-token".to_string()));
        let settings = ActionSettings {
            wait: Duration::from_millis(100),
            backoff: BackoffPolicy::default(),
        };
        let lp = ActionLoop::new(
            settings,
            transport,
            ex,
            Journal::open(&h.state).unwrap(),
            rx,
        );
        let stop = second.clone();
        let stats = lp.run(async move { stop.got.notified().await }).await;
        assert_eq!(stats.ran, 1);
        assert_eq!(version_file(&h), "2\n");
        assert_eq!(
            *refused.lock().unwrap(),
            1,
            "the first server was asked once"
        );
        let results = second.results.lock().unwrap();
        assert_eq!(results.len(), 1, "{results:?}");
        assert_eq!(results[0].0, uid(5));
        assert!(results[0].1.is_ok());
    }
}
