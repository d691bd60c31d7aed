//! How the agent talks to the server: the [`Transport`] trait the send loop is written against,
//! and [`HttpTransport`], its implementation over the v1 HTTP+JSON API.
//!
//! The trait exists so the loop's timing (backoff, buffering, re-enrolment) is tested with a
//! fake transport on tokio's paused clock, without a network.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bellwether_model::wire::servers::{
    verdict_for_status, Pass, ServerList, Verdict, LEADER_HEADER,
};
use bellwether_model::wire::{ActionResult, ActionsResponse, AgentAction};
use bellwether_model::HostProfile;
use serde::Serialize;

/// Why a request did not succeed, sorted by what the agent should do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// 401: the token is not (or no longer) valid. For agent calls, enrol again.
    #[error("the server refused the token (401)")]
    Unauthorized,
    /// Another 4xx: this payload will never be accepted; retrying it would loop forever.
    #[error("the server rejected the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    /// The server could not be reached, timed out, or answered 5xx: try again later.
    #[error("the server is unavailable: {0}")]
    Unavailable(String),
}

pub use bellwether_model::wire::{EnrolRequest, EnrolResponse, SamplesRequest, SamplesResponse};

/// The three calls an agent makes.
pub trait Transport {
    /// Enrols with the enrolment token and returns the agent token.
    fn enrol(&mut self, req: &EnrolRequest) -> impl Future<Output = Result<String, SendError>>;
    fn send_profile(
        &mut self,
        agent_token: &str,
        profile: &HostProfile,
    ) -> impl Future<Output = Result<(), SendError>>;
    fn send_samples(
        &mut self,
        agent_token: &str,
        body: &SamplesRequest,
    ) -> impl Future<Output = Result<(), SendError>>;
}

/// The real transport: HTTP(S) with rustls, one pooled connection per server, a per-request
/// timeout, and failover between several server addresses.
///
/// A call tries the address that last answered first (shared by every clone, so the sample
/// loop and the action loop follow each other), then the others, and moves on only when the
/// request was surely not carried out: the connection failed, or the server answered 503, 421
/// or 307 (a follower without a leader, or one naming the leader in `X-Bellwether-Leader`; a
/// named leader is tried next when it is one of the configured addresses). A read (the action
/// long-poll) also moves on after a timeout or a 502/504. A write that timed out is not sent
/// elsewhere in the same call, since the server may have taken it: the call fails, the loop
/// backs off as before, and its retry starts at the next address. One pass starts no new
/// attempt after the failover budget (the request timeout by default) has passed.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    servers: ServerList,
    bases: Vec<reqwest::Url>,
    /// The index of the address that last answered.
    current: Arc<AtomicUsize>,
    enrol_token: String,
    timeout: Duration,
    budget: Duration,
}

/// The server URL could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("server url {url:?} is not valid: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("could not build the http client: {0}")]
    Client(#[source] reqwest::Error),
    #[error(transparent)]
    Tls(#[from] bellwether_tls::TlsError),
}

impl HttpTransport {
    /// A transport to `server` (one URL or a comma-separated list); an https server is
    /// verified against the system's roots.
    pub fn new(
        server: &str,
        enrol_token: impl Into<String>,
        timeout: Duration,
    ) -> Result<Self, TransportError> {
        Self::with_tls(
            server,
            enrol_token,
            timeout,
            &bellwether_tls::ClientTls::system(),
        )
    }

    /// A transport to `server` (one URL or a comma-separated list) that verifies an https
    /// server with `tls` (`--ca-file`, `--pin`); those settings with a plain http URL are
    /// refused.
    pub fn with_tls(
        server: &str,
        enrol_token: impl Into<String>,
        timeout: Duration,
        tls: &bellwether_tls::ClientTls,
    ) -> Result<Self, TransportError> {
        let servers = ServerList::parse(&[server]).map_err(|e| TransportError::BadUrl {
            url: server.to_owned(),
            reason: e.to_string(),
        })?;
        Self::with_servers(&servers, enrol_token, timeout, tls)
    }

    /// A transport to every address of `servers`, verifying https ones with `tls`.
    pub fn with_servers(
        servers: &ServerList,
        enrol_token: impl Into<String>,
        timeout: Duration,
        tls: &bellwether_tls::ClientTls,
    ) -> Result<Self, TransportError> {
        let mut bases = Vec::with_capacity(servers.len());
        for server in servers.urls() {
            let bad = |reason: String| TransportError::BadUrl {
                url: server.to_owned(),
                reason,
            };
            let mut base = reqwest::Url::parse(server).map_err(|e| bad(e.to_string()))?;
            if !matches!(base.scheme(), "http" | "https") {
                return Err(bad(format!(
                    "scheme {:?} is not http or https",
                    base.scheme()
                )));
            }
            if !base.path().ends_with('/') {
                let path = format!("{}/", base.path());
                base.set_path(&path);
            }
            if base.scheme() != "https" && !tls.is_default() {
                return Err(bad(
                    "--ca-file and --pin verify an https:// server; this URL is plain http".into(),
                ));
            }
            bases.push(base);
        }
        let mut builder = reqwest::Client::builder();
        if bases.iter().any(|b| b.scheme() == "https") {
            builder = builder.use_preconfigured_tls(bellwether_tls::client_config(tls)?);
        }
        let client = builder
            .timeout(timeout)
            .connect_timeout(timeout)
            // A 307 names the leader: the transport decides where to go, not reqwest.
            .redirect(reqwest::redirect::Policy::none())
            // One agent talks to one server at a time: one idle connection per server.
            .pool_max_idle_per_host(1)
            .user_agent(concat!("bellwether-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(TransportError::Client)?;
        Ok(HttpTransport {
            client,
            servers: servers.clone(),
            bases,
            current: Arc::new(AtomicUsize::new(0)),
            enrol_token: enrol_token.into(),
            timeout,
            budget: timeout,
        })
    }

    /// One pass over the addresses starts no new attempt after `budget` (default: the
    /// request timeout).
    pub fn with_failover_budget(mut self, budget: Duration) -> Self {
        self.budget = budget;
        self
    }

    /// The addresses, in the order given.
    pub fn servers(&self) -> &ServerList {
        &self.servers
    }

    /// The address that last answered (the first one a call tries).
    pub fn current_server(&self) -> &str {
        &self.servers.urls()[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// Checks, once, that every https server's certificate is trusted: `Err` with the reason
    /// only when a handshake refused the certificate (a server that is down, or any other
    /// failure, is the send loop's business and gives `Ok`).
    pub async fn verify_server(&self) -> Result<(), String> {
        for base in self.bases.iter().filter(|b| b.scheme() == "https") {
            let url = base.join("healthz").expect("a static path joins");
            if let Err(e) = self.client.get(url).send().await {
                if let Some(reason) = bellwether_tls::certificate_error(&e) {
                    return Err(format!(
                        "could not verify the server's certificate at {base}: {reason}"
                    ));
                }
            }
        }
        Ok(())
    }

    #[cfg(test)]
    fn url(&self, path: &str) -> reqwest::Url {
        self.bases[0]
            .join(path)
            .expect("static api paths join onto an http base url")
    }

    /// Sends the request `build` makes for an address's URL of `path`, failing over as the
    /// type's text says. `read` is true for a request that changes nothing.
    async fn send(
        &self,
        path: &str,
        read: bool,
        build: impl Fn(reqwest::Url) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, SendError> {
        let started = tokio::time::Instant::now();
        let n = self.bases.len();
        let mut pass = Pass::new(n, self.current.load(Ordering::Relaxed));
        let mut failures: Vec<(usize, String)> = Vec::new();
        while let Some(i) = pass.next() {
            if !failures.is_empty() && started.elapsed() >= self.budget {
                break;
            }
            let url = self.bases[i]
                .join(path)
                .expect("api paths join onto an http base url");
            let resp = match build(url).send().await {
                Ok(resp) => resp,
                Err(e) => {
                    let not_sent =
                        e.is_connect() || bellwether_tls::certificate_error(&e).is_some();
                    let err = send_error(e);
                    if !(not_sent || read) {
                        // The server may have taken it: no second copy elsewhere now; the
                        // loop's retry starts at the next address.
                        self.current.store((i + 1) % n, Ordering::Relaxed);
                        return Err(self.unavailable(failures, i, err));
                    }
                    failures.push((i, message(&err)));
                    continue;
                }
            };
            let status = resp.status().as_u16();
            if verdict_for_status(status, read) == Verdict::Next {
                if let Some(j) = leader_hint(&resp).and_then(|h| self.servers.position(&h)) {
                    pass.prefer(j);
                }
                let err = classify(resp)
                    .await
                    .err()
                    .unwrap_or_else(|| SendError::Unavailable(format!("{status}")));
                failures.push((i, message(&err)));
                continue;
            }
            self.current.store(i, Ordering::Relaxed);
            return classify(resp).await;
        }
        let last = failures.pop().expect("a pass tries at least one address");
        Err(self.unavailable(failures, last.0, SendError::Unavailable(last.1)))
    }

    /// The error of a pass that found no server: the last error, prefixed with the others and
    /// their addresses when there are several.
    fn unavailable(&self, earlier: Vec<(usize, String)>, i: usize, last: SendError) -> SendError {
        if self.bases.len() == 1 {
            return last;
        }
        let mut parts: Vec<String> = earlier
            .into_iter()
            .map(|(j, m)| format!("{}: {m}", self.servers.urls()[j]))
            .collect();
        match last {
            SendError::Unavailable(m) => {
                parts.push(format!("{}: {m}", self.servers.urls()[i]));
                SendError::Unavailable(parts.join("; "))
            }
            other => other,
        }
    }

    async fn post<B: Serialize>(
        &self,
        path: &str,
        token: &str,
        body: &B,
    ) -> Result<reqwest::Response, SendError> {
        self.send(path, false, |url| {
            self.client.post(url).bearer_auth(token).json(body)
        })
        .await
    }
}

/// The leader a 421, 503 or 307 names: `X-Bellwether-Leader`, else a 307's `Location`.
fn leader_hint(resp: &reqwest::Response) -> Option<String> {
    let h = resp.headers();
    h.get(LEADER_HEADER)
        .or_else(|| h.get(reqwest::header::LOCATION))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The text of an [`SendError::Unavailable`] (or any error) for the summary of a pass.
fn message(e: &SendError) -> String {
    match e {
        SendError::Unavailable(m) => m.clone(),
        other => other.to_string(),
    }
}

/// Maps a response to `Ok` (2xx) or the [`SendError`] that says what to do next.
async fn classify(resp: reqwest::Response) -> Result<reqwest::Response, SendError> {
    let status = resp.status().as_u16();
    if resp.status().is_success() {
        return Ok(resp);
    }
    let message = match resp.text().await {
        Ok(body) => serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or(body),
        Err(e) => e.to_string(),
    };
    Err(error_for_status(status, message))
}

/// What a non-2xx status means for the agent: 401 → enrol again; another 4xx (but 408 and
/// 429) → the payload will never be accepted; anything else → try again later.
pub fn error_for_status(status: u16, message: String) -> SendError {
    match status {
        401 => SendError::Unauthorized,
        408 | 429 => SendError::Unavailable(format!("{status}: {message}")),
        400..=499 => SendError::Rejected { status, message },
        _ => SendError::Unavailable(format!("{status}: {message}")),
    }
}

/// A request that got no answer: unavailable, and said plainly when it is the server's
/// certificate that was refused.
fn send_error(e: reqwest::Error) -> SendError {
    match bellwether_tls::certificate_error(&e) {
        Some(reason) => SendError::Unavailable(format!(
            "could not verify the server's certificate: {reason}"
        )),
        None => SendError::Unavailable(error_chain(&e)),
    }
}

/// reqwest's top-level message ("error sending request") hides the cause; keep the chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

impl Transport for HttpTransport {
    async fn enrol(&mut self, req: &EnrolRequest) -> Result<String, SendError> {
        let resp = self.post("api/v1/enrol", &self.enrol_token, req).await?;
        let body: EnrolResponse = resp.json().await.map_err(|e| {
            SendError::Unavailable(format!("bad enrolment answer: {}", error_chain(&e)))
        })?;
        Ok(body.agent_token)
    }

    async fn send_profile(&mut self, token: &str, profile: &HostProfile) -> Result<(), SendError> {
        self.post("api/v1/agent/profile", token, profile)
            .await
            .map(drop)
    }

    async fn send_samples(&mut self, token: &str, body: &SamplesRequest) -> Result<(), SendError> {
        self.post("api/v1/agent/samples", token, body)
            .await
            .map(drop)
    }
}

impl crate::pg::ConfigTransport for HttpTransport {
    async fn send_config(
        &self,
        token: &str,
        req: &bellwether_model::wire::ConfigReportRequest,
    ) -> Result<(), SendError> {
        self.post("api/v1/agent/config", token, req).await.map(drop)
    }

    async fn send_graph(
        &self,
        token: &str,
        req: &bellwether_model::wire::ConfigGraphRequest,
    ) -> Result<(), SendError> {
        self.post("api/v1/agent/config/graph", token, req)
            .await
            .map(drop)
    }
}

impl crate::actions::ActionTransport for HttpTransport {
    async fn poll_actions(
        &mut self,
        token: &str,
        wait: Duration,
    ) -> Result<Vec<AgentAction>, SendError> {
        let wait_ms = wait.as_millis().to_string();
        let resp = self
            .send("api/v1/agent/actions", true, |mut url| {
                url.query_pairs_mut().append_pair("wait_ms", &wait_ms);
                self.client
                    .get(url)
                    .bearer_auth(token)
                    // The long-poll waits `wait` on purpose: allow it on top of the usual timeout.
                    .timeout(wait + self.timeout)
            })
            .await?;
        let body: ActionsResponse = resp.json().await.map_err(|e| {
            SendError::Unavailable(format!("bad actions answer: {}", error_chain(&e)))
        })?;
        Ok(body.actions)
    }

    async fn report_action(
        &mut self,
        token: &str,
        id: &str,
        report: &ActionResult,
    ) -> Result<(), SendError> {
        self.post(&format!("api/v1/agent/actions/{id}/result"), token, report)
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_keeps_a_path_prefix() {
        let t =
            HttpTransport::new("http://127.0.0.1:7878/bw", "t", Duration::from_secs(1)).unwrap();
        assert_eq!(
            t.url("api/v1/enrol").as_str(),
            "http://127.0.0.1:7878/bw/api/v1/enrol"
        );
        let t = HttpTransport::new("https://h", "t", Duration::from_secs(1)).unwrap();
        assert_eq!(t.url("api/v1/enrol").as_str(), "https://h/api/v1/enrol");
    }

    #[test]
    fn bad_urls_are_named() {
        let e = HttpTransport::new("ftp://h", "t", Duration::from_secs(1)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "server url \"ftp://h\" is not valid: server address \"ftp://h\" must start with http:// or https://"
        );
        let e = HttpTransport::new("not a url", "t", Duration::from_secs(1)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("server url \"not a url\" is not valid"),
            "{e}"
        );
    }

    #[test]
    fn ca_files_and_pins_are_refused_with_a_plain_http_url() {
        let tls = bellwether_tls::ClientTls {
            ca_file: None,
            pins: vec![bellwether_tls::Pin([1; 32])],
        };
        let e = HttpTransport::with_tls("http://127.0.0.1:1", "t", Duration::from_secs(1), &tls)
            .unwrap_err()
            .to_string();
        assert!(e.contains("this URL is plain http"), "{e}");
        HttpTransport::with_tls("https://127.0.0.1:1", "t", Duration::from_secs(1), &tls).unwrap();
    }

    #[test]
    fn statuses_map_to_what_the_agent_does_next() {
        assert_eq!(error_for_status(401, "no".into()), SendError::Unauthorized);
        assert_eq!(
            error_for_status(400, "missing field `name`".into()),
            SendError::Rejected {
                status: 400,
                message: "missing field `name`".into()
            }
        );
        assert!(matches!(
            error_for_status(413, String::new()),
            SendError::Rejected { status: 413, .. }
        ));
        for retry in [408, 429, 500, 502, 503] {
            assert!(
                matches!(
                    error_for_status(retry, String::new()),
                    SendError::Unavailable(_)
                ),
                "{retry}"
            );
        }
    }
}

/// Failover against real local listeners: down, 503, naming a leader, or dropping a request.
#[cfg(test)]
mod failover_tests {
    use std::sync::atomic::AtomicU32;

    use axum::http::{HeaderMap, HeaderValue, StatusCode};
    use axum::response::IntoResponse;
    use bellwether_model::wire::ActionOutcome;
    use bellwether_model::HostName;

    use super::*;
    use crate::actions::ActionTransport;

    struct Stub {
        url: String,
        hits: Arc<AtomicU32>,
    }

    impl Stub {
        fn hits(&self) -> u32 {
            self.hits.load(Ordering::SeqCst)
        }
    }

    /// A server answering every request with `status`, `body` and an optional leader header.
    async fn stub(status: u16, leader: Option<String>, body: serde_json::Value) -> Stub {
        let hits = Arc::new(AtomicU32::new(0));
        let counter = hits.clone();
        let handler = move || {
            let (counter, leader, body) = (counter.clone(), leader.clone(), body.clone());
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut h = HeaderMap::new();
                if let Some(l) = leader {
                    h.insert("x-bellwether-leader", HeaderValue::from_str(&l).unwrap());
                }
                (StatusCode::from_u16(status).unwrap(), h, axum::Json(body)).into_response()
            }
        };
        let app = axum::Router::new().fallback(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Stub { url, hits }
    }

    async fn dead() -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        url
    }

    /// Reads a request, then closes the connection without an answer.
    async fn dropper() -> Stub {
        let hits = Arc::new(AtomicU32::new(0));
        let counter = hits.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 8192];
                let _ = tokio::io::AsyncReadExt::read(&mut sock, &mut buf).await;
            }
        });
        Stub { url, hits }
    }

    fn transport(urls: &[&str]) -> HttpTransport {
        HttpTransport::new(&urls.join(","), "enrol", Duration::from_secs(5)).unwrap()
    }

    fn samples() -> SamplesRequest {
        SamplesRequest {
            samples: vec![],
            dropped: 0,
        }
    }

    #[tokio::test]
    async fn enrolment_passes_a_dead_server_and_follows_a_named_leader() {
        let down = dead().await;
        let leader = stub(
            200,
            None,
            serde_json::json!({"host": "web-01", "agent_token": "agent-t"}),
        )
        .await;
        let other = stub(500, None, serde_json::json!({})).await;
        let follower = stub(503, Some(leader.url.clone()), serde_json::json!({})).await;
        let mut t = transport(&[&down, &follower.url, &other.url, &leader.url]);
        let req = EnrolRequest {
            name: HostName::new("web-01").unwrap(),
            labels: Default::default(),
            address: None,
        };
        assert_eq!(t.enrol(&req).await.unwrap(), "agent-t");
        assert_eq!((follower.hits(), other.hits(), leader.hits()), (1, 0, 1));
        assert_eq!(t.current_server(), leader.url);
        // A clone (the other loop) starts where this one found the leader.
        let mut other_loop = t.clone();
        other_loop
            .send_samples("agent-t", &samples())
            .await
            .unwrap();
        assert_eq!(leader.hits(), 2);
    }

    #[tokio::test]
    async fn a_write_that_reached_a_server_is_not_repeated_elsewhere_in_the_same_call() {
        let taken = dropper().await;
        let good = stub(202, None, serde_json::json!({"accepted": 0})).await;
        let mut t = transport(&[&taken.url, &good.url]);
        let e = t.send_samples("a", &samples()).await.unwrap_err();
        assert!(matches!(e, SendError::Unavailable(_)), "{e:?}");
        assert_eq!((taken.hits(), good.hits()), (1, 0));
        // The loop's retry starts at the next address.
        t.send_samples("a", &samples()).await.unwrap();
        assert_eq!((taken.hits(), good.hits()), (1, 1));
        // A result report is a write too.
        let mut t = transport(&[&taken.url, &good.url]);
        let r = ActionResult::new(ActionOutcome::Ok, 1, 2);
        let id = "0123456789abcdef0123456789abcdef";
        assert!(t.report_action("a", id, &r).await.is_err());
        assert_eq!((taken.hits(), good.hits()), (2, 1));
    }

    #[tokio::test]
    async fn a_poll_moves_on_after_any_failure() {
        let taken = dropper().await;
        let unavailable = stub(503, None, serde_json::json!({"error": "no leader"})).await;
        let good = stub(200, None, serde_json::json!({"actions": []})).await;
        let mut t = transport(&[&taken.url, &unavailable.url, &good.url]);
        let got = t
            .poll_actions("a", Duration::from_millis(10))
            .await
            .unwrap();
        assert!(got.is_empty());
        assert_eq!((taken.hits(), unavailable.hits(), good.hits()), (1, 1, 1));
    }

    #[tokio::test]
    async fn refusals_do_not_fail_over_and_a_whole_failed_pass_names_every_server() {
        let rejecting = stub(400, None, serde_json::json!({"error": "bad body"})).await;
        let good = stub(202, None, serde_json::json!({"accepted": 0})).await;
        let mut t = transport(&[&rejecting.url, &good.url]);
        let e = t.send_samples("a", &samples()).await.unwrap_err();
        assert_eq!(
            e,
            SendError::Rejected {
                status: 400,
                message: "bad body".into()
            }
        );
        assert_eq!(good.hits(), 0);
        let unauthorized = stub(401, None, serde_json::json!({})).await;
        let mut t = transport(&[&unauthorized.url, &good.url]);
        assert_eq!(
            t.send_samples("a", &samples()).await.unwrap_err(),
            SendError::Unauthorized
        );
        assert_eq!(good.hits(), 0);

        let down = dead().await;
        let unavailable = stub(503, None, serde_json::json!({"error": "no leader"})).await;
        let mut t = transport(&[&down, &unavailable.url]);
        let SendError::Unavailable(m) = t.send_samples("a", &samples()).await.unwrap_err() else {
            panic!("not unavailable")
        };
        assert!(
            m.starts_with(&format!("{down}: "))
                && m.contains(&format!("; {}: 503: no leader", unavailable.url)),
            "{m}"
        );
    }
}
