//! `GET /api/v1/events/stream`: the event log as server-sent events, for the dashboard.
//!
//! Each event goes out as one SSE message whose `id:` is the event's id and whose `data:` is
//! the event's JSON (the shape of `GET /api/v1/events` items). The stream starts after the id
//! in the `Last-Event-ID` header (what a reconnecting client sends) or in `?after=ID`; with
//! neither it starts at the newest event, so only events written from then on are sent.
//!
//! It does not poll: it awaits [`bellwether_store::Store::follow_writes`], which changes after
//! every write this process makes, and then reads the events after the last id it sent. Writes
//! made by another replica on the same PostgreSQL store do not wake it, so it also looks every
//! [`OTHER_WRITERS_CHECK`]. A comment line goes out every [`KEEP_ALIVE`] so proxies keep the
//! connection open, and the stream ends when the server shuts down (a reconnect with
//! `Last-Event-ID` misses nothing).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use bellwether_store::{Event, EventFilter, Store};
use futures_util::Stream;
use serde::Deserialize;

use crate::auth::Viewer;
use crate::error::ApiError;
use crate::AppState;

/// How often a keep-alive comment goes out on an idle stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How often a stream looks for events written by another process (another replica).
pub const OTHER_WRITERS_CHECK: Duration = Duration::from_secs(5);

/// Events read from the store at once.
const BATCH: i64 = 500;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamQuery {
    /// Send the events with a larger id (ignored when `Last-Event-ID` is given).
    after: Option<i64>,
}

/// Where a stream starts: `Last-Event-ID`, else `?after=`, else the newest event's id.
pub(crate) async fn start_after(
    store: &Store,
    headers: &HeaderMap,
    after: Option<i64>,
) -> Result<i64, ApiError> {
    if let Some(v) = headers.get("last-event-id") {
        let text = v
            .to_str()
            .map_err(|_| ApiError::bad_request("the Last-Event-ID header is not ASCII"))?;
        return text.trim().parse::<i64>().map_err(|_| {
            ApiError::bad_request(format!(
                "bad Last-Event-ID {text:?}: it must be an event id (a whole number) sent by this stream"
            ))
        });
    }
    if let Some(a) = after {
        return Ok(a);
    }
    let newest = store
        .find_events(
            &EventFilter {
                host: None,
                kind: None,
                task: None,
                after_id: None,
            },
            1,
        )
        .await?;
    Ok(newest.first().map(|e| e.id).unwrap_or(0))
}

pub(crate) async fn events_stream(
    State(state): State<AppState>,
    _auth: Viewer,
    headers: HeaderMap,
    q: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    let cursor = start_after(&state.store, &headers, q.after).await?;
    let follow = Follow {
        store: state.store.clone(),
        writes: state.store.follow_writes(),
        stop: state.stop.subscribe(),
        cursor,
        pending: VecDeque::new(),
        done: false,
    };
    let stream =
        futures_util::stream::unfold(
            follow,
            |mut f| async move { f.next().await.map(|e| (Ok(e), f)) },
        );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// One client's place in the event log.
struct Follow {
    store: Store,
    writes: tokio::sync::watch::Receiver<u64>,
    stop: tokio::sync::watch::Receiver<bool>,
    cursor: i64,
    pending: VecDeque<Event>,
    done: bool,
}

impl Follow {
    /// The next message, or `None` when the stream ends (shutdown, or after an error message).
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(message(&e));
            }
            if self.done || *self.stop.borrow() {
                return None;
            }
            // Mark the writes seen before reading, so one that lands during the read wakes
            // the wait below at once.
            self.writes.borrow_and_update();
            let filter = EventFilter {
                host: None,
                kind: None,
                task: None,
                after_id: Some(self.cursor),
            };
            match self.store.find_events(&filter, BATCH).await {
                Ok(events) if !events.is_empty() => {
                    self.cursor = events.last().map(|e| e.id).unwrap_or(self.cursor);
                    self.pending.extend(events);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    // The client reconnects with Last-Event-ID and misses nothing.
                    self.done = true;
                    tracing::warn!(error = %e, "The event stream could not read the event log.");
                    return Some(
                        SseEvent::default()
                            .event("error")
                            .data(format!("cannot read the event log: {e}")),
                    );
                }
            }
            tokio::select! {
                _ = self.writes.changed() => {}
                _ = self.stop.wait_for(|s| *s) => return None,
                () = tokio::time::sleep(OTHER_WRITERS_CHECK) => {}
            }
        }
    }
}

fn message(e: &Event) -> SseEvent {
    let data = serde_json::to_string(e).expect("an event always serialises");
    SseEvent::default().id(e.id.to_string()).data(data)
}
