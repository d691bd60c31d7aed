//! What a follower does with a request only the leader may answer: every write (any method
//! but GET and HEAD) and the agents' action long-poll (the leader's runners wake it) go to the
//! leader's advertised URL, body and answer streamed through, with the same headers (the token
//! included; the leader authenticates and audits). Reads are served from the shared store.
//!
//! When no leader is known (the lease expired and nobody has taken it yet), the leader does
//! not answer, or a request that was already forwarded once reaches a replica that does not
//! lead (the leader moved in between), the answer is `503` with `Retry-After: 1` and
//! `X-Bellwether-Leader` (the leader's URL as last seen, empty when none is known), so a client
//! retries, here or at the leader, and a request is never forwarded twice.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::AppState;

/// Names the leader's URL on every answer a follower gives for the leader.
pub const LEADER_HEADER: &str = "x-bellwether-leader";
/// Set on a forwarded request (to the forwarding replica's holder id): a replica that receives
/// it and does not lead answers 503 instead of forwarding again.
pub const FORWARDED_HEADER: &str = "x-bellwether-forwarded";

/// How long a client waits before retrying when no leader is reachable: a new leader takes the
/// lease within the lease's ttl and a follower's retry interval.
const RETRY_AFTER_SECS: u64 = 1;

/// The longest a forwarded request may take, answer included: above the agents' longest
/// long-poll (30 s).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The HTTP client that forwards to the leader.
#[derive(Debug, Clone)]
pub(crate) struct Forwarder {
    client: reqwest::Client,
}

impl Forwarder {
    /// A client that trusts `tls` (the system roots, or `--replica-ca-file`) for `https://`
    /// leaders.
    pub(crate) fn new(tls: &bellwether_tls::ClientTls) -> Result<Forwarder, String> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(FORWARD_TIMEOUT)
            // Answers pass through as they are, redirects included.
            .redirect(reqwest::redirect::Policy::none());
        if !tls.is_default() {
            builder = builder.use_preconfigured_tls(
                bellwether_tls::client_config(tls).map_err(|e| e.to_string())?,
            );
        }
        let client = builder.build().map_err(|e| e.to_string())?;
        Ok(Forwarder { client })
    }
}

/// Whether only the leader may answer this request.
fn needs_leader(method: &Method, path: &str) -> bool {
    match *method {
        Method::GET | Method::HEAD => path == "/api/v1/agent/actions",
        _ => true,
    }
}

/// Headers that belong to one connection, never forwarded either way.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

fn unavailable(leader: Option<&str>, message: String) -> Response {
    let mut resp = (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({ "error": message })),
    )
        .into_response();
    let h = resp.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    h.insert(
        HeaderName::from_static(LEADER_HEADER),
        HeaderValue::from_str(leader.unwrap_or("")).unwrap_or(HeaderValue::from_static("")),
    );
    resp
}

/// The middleware: passes the request on when this replica leads (or it is a read), forwards
/// it to the leader otherwise.
pub(crate) async fn to_leader(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let lead = &state.leader;
    if !lead.is_replicated() || !needs_leader(req.method(), req.uri().path()) || lead.leads_now() {
        return next.run(req).await;
    }
    let own = lead.own_url();
    let leader = lead
        .view()
        .leader_url
        .filter(|u| own.as_deref() != Some(u.as_str()));
    let Some(leader) = leader else {
        return unavailable(
            None,
            "no server leads right now (a new leader takes over within a few seconds); retry"
                .into(),
        );
    };
    if req.headers().contains_key(FORWARDED_HEADER) {
        return unavailable(
            Some(&leader),
            format!("this request was forwarded to a server that no longer leads; the leader is now {leader}; retry"),
        );
    }
    forward(&state, &leader, req).await
}

async fn forward(state: &AppState, leader: &str, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let url = format!("{}{path}", leader.trim_end_matches('/'));
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(state.leader.holder()) {
        headers.insert(HeaderName::from_static(FORWARDED_HEADER), v);
    }
    let sent = state
        .forward
        .client
        .request(parts.method.clone(), &url)
        .headers(headers)
        .body(reqwest::Body::wrap_stream(body.into_data_stream()))
        .send()
        .await;
    let answer = match sent {
        Ok(a) => a,
        Err(e) if e.is_connect() => {
            tracing::warn!(leader, error = %e, "The leader did not accept a forwarded request.");
            return unavailable(
                Some(leader),
                format!("the leader at {leader} cannot be reached ({e}); retry in a moment, a new leader takes over within a few seconds"),
            );
        }
        Err(e) => {
            // The leader may have acted on it: not "unavailable", so a client does not take it
            // for "nothing happened".
            tracing::warn!(leader, error = %e, "A request forwarded to the leader failed.");
            let mut resp = (
                StatusCode::BAD_GATEWAY,
                Json(serde_json::json!({
                    "error": format!("the request was forwarded to the leader at {leader}, which did not answer in full ({e}); it may or may not have been carried out")
                })),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(leader) {
                resp.headers_mut()
                    .insert(HeaderName::from_static(LEADER_HEADER), v);
            }
            return resp;
        }
    };
    let mut resp = Response::builder().status(answer.status());
    if let Some(h) = resp.headers_mut() {
        for (name, value) in answer.headers() {
            if !hop_by_hop(name) && name != header::CONTENT_LENGTH {
                h.append(name.clone(), value.clone());
            }
        }
        if let Ok(v) = HeaderValue::from_str(leader) {
            h.insert(HeaderName::from_static(LEADER_HEADER), v);
        }
    }
    resp.body(Body::from_stream(answer.bytes_stream()))
        .unwrap_or_else(|e| {
            unavailable(
                Some(leader),
                format!("could not pass on the leader's answer: {e}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_the_action_long_poll_need_the_leader_reads_do_not() {
        assert!(needs_leader(&Method::POST, "/api/v1/agent/samples"));
        assert!(needs_leader(&Method::DELETE, "/api/v1/tokens/3"));
        assert!(needs_leader(&Method::GET, "/api/v1/agent/actions"));
        assert!(!needs_leader(&Method::GET, "/api/v1/rollouts"));
        assert!(!needs_leader(&Method::HEAD, "/api/v1/events"));
        assert!(!needs_leader(&Method::GET, "/healthz"));
    }
}
