//! How the agent talks to the server: the [`Transport`] trait the send loop is written against,
//! and [`HttpTransport`], its implementation over the v1 HTTP+JSON API.
//!
//! The trait exists so the loop's timing (backoff, buffering, re-enrolment) is tested with a
//! fake transport on tokio's paused clock, without a network.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use bellwether_model::{HostName, HostProfile, MetricSample};
use serde::{Deserialize, Serialize};

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

/// `POST /api/v1/enrol` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrolRequest {
    pub name: HostName,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrolResponse {
    pub host: HostName,
    pub agent_token: String,
}

/// `POST /api/v1/agent/samples` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplesRequest {
    pub samples: Vec<MetricSample>,
    /// Samples dropped while the server was away, since the last successful send.
    pub dropped: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplesResponse {
    pub accepted: u64,
}

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

/// The real transport: HTTP(S) with rustls, one pooled connection, a per-request timeout.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    base: reqwest::Url,
    enrol_token: String,
    timeout: Duration,
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
    /// A transport to `server`; an https server is verified against the system's roots.
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

    /// A transport to `server` that verifies an https server with `tls` (`--ca-file`,
    /// `--pin`); those settings with a plain http URL are refused.
    pub fn with_tls(
        server: &str,
        enrol_token: impl Into<String>,
        timeout: Duration,
        tls: &bellwether_tls::ClientTls,
    ) -> Result<Self, TransportError> {
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
        let mut builder = reqwest::Client::builder();
        if base.scheme() == "https" {
            builder = builder.use_preconfigured_tls(bellwether_tls::client_config(tls)?);
        } else if !tls.is_default() {
            return Err(bad(
                "--ca-file and --pin verify an https:// server; this URL is plain http".into(),
            ));
        }
        let client = builder
            .timeout(timeout)
            .connect_timeout(timeout)
            // One agent talks to one server: a single idle connection is all it needs.
            .pool_max_idle_per_host(1)
            .user_agent(concat!("bellwether-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(TransportError::Client)?;
        Ok(HttpTransport {
            client,
            base,
            enrol_token: enrol_token.into(),
            timeout,
        })
    }

    /// Checks, once, that an https server's certificate is trusted: `Err` with the reason
    /// only when the handshake refused the certificate (a server that is down, or any other
    /// failure, is the send loop's business and gives `Ok`).
    pub async fn verify_server(&self) -> Result<(), String> {
        if self.base.scheme() != "https" {
            return Ok(());
        }
        match self.client.get(self.url("healthz")).send().await {
            Err(e) => match bellwether_tls::certificate_error(&e) {
                Some(reason) => Err(format!(
                    "could not verify the server's certificate at {}: {reason}",
                    self.base
                )),
                None => Ok(()),
            },
            Ok(_) => Ok(()),
        }
    }

    fn url(&self, path: &str) -> reqwest::Url {
        self.base
            .join(path)
            .expect("static api paths join onto an http base url")
    }

    async fn post<B: Serialize>(
        &self,
        path: &str,
        token: &str,
        body: &B,
    ) -> Result<reqwest::Response, SendError> {
        let resp = self
            .client
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .map_err(send_error)?;
        classify(resp).await
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
        let resp = self
            .post("api/v1/enrol", &self.enrol_token.clone(), req)
            .await?;
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

impl crate::actions::ActionTransport for HttpTransport {
    async fn poll_actions(
        &mut self,
        token: &str,
        wait: Duration,
    ) -> Result<Vec<crate::actions::PendingAction>, SendError> {
        let mut url = self.url("api/v1/agent/actions");
        url.query_pairs_mut()
            .append_pair("wait_ms", &wait.as_millis().to_string());
        let resp = self
            .client
            .get(url)
            .bearer_auth(token)
            // The long-poll waits `wait` on purpose: allow it on top of the usual timeout.
            .timeout(wait + self.timeout)
            .send()
            .await
            .map_err(send_error)?;
        let resp = classify(resp).await?;
        let body: crate::actions::ActionsResponse = resp.json().await.map_err(|e| {
            SendError::Unavailable(format!("bad actions answer: {}", error_chain(&e)))
        })?;
        Ok(body.actions)
    }

    async fn report_action(
        &mut self,
        token: &str,
        id: &str,
        report: &crate::exec::ActionReport,
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
            "server url \"ftp://h\" is not valid: scheme \"ftp\" is not http or https"
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

    #[test]
    fn wire_shapes_match_the_api_contract() {
        let body = SamplesRequest {
            samples: vec![MetricSample {
                ts_ms: 5,
                name: "load1".into(),
                value: 0.5,
            }],
            dropped: 3,
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"samples":[{"ts_ms":5,"name":"load1","value":0.5}],"dropped":3}"#
        );
        let enrol = EnrolRequest {
            name: HostName::new("web-01").unwrap(),
            labels: [("role".to_string(), "web".to_string())].into(),
        };
        assert_eq!(
            serde_json::to_string(&enrol).unwrap(),
            r#"{"name":"web-01","labels":{"role":"web"}}"#
        );
    }
}
