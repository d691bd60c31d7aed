//! A small async client of the operator API, for the `bellwether` CLI (and tests).
//!
//! Errors keep apart what the operator must act on differently: a server that cannot be
//! reached, a token that was refused, and an error the API answered with. Several server
//! addresses fail over (see [`Client`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bellwether_model::wire::servers::{
    verdict_for_status, Pass, ServerList, Verdict, LEADER_HEADER,
};
use bellwether_model::{DriftScore, HostName};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::types::{BaselineRequest, BaselineResponse, FleetDrift, HostDetail, HostSummary};

mod alert_calls;
mod config_calls;
mod mirror_calls;
mod rollout_calls;
pub mod sandbox_calls;
mod shadow_calls;
mod token_calls;

/// Why a call to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad server URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach the bellwether server at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    /// The TLS handshake failed because the server's certificate is not trusted.
    #[error("could not verify the server's certificate at {url}: {reason}")]
    Untrusted { url: String, reason: String },
    #[error("cannot use the TLS settings: {0}")]
    Tls(#[from] bellwether_tls::TlsError),
    #[error("the server at {url} refused the token: {message}")]
    Unauthorized { url: String, message: String },
    #[error("{url} answered {status}: {message}")]
    Api {
        url: String,
        status: u16,
        message: String,
    },
    #[error("cannot decode the answer of {url}: {source}")]
    Decode { url: String, source: reqwest::Error },
    /// Several addresses were given and none carried the request out within the failover
    /// budget; `attempts` says what each answered, last first.
    #[error("no bellwether server took the request within {budget_ms} ms: {attempts}")]
    NoServer { budget_ms: u64, attempts: String },
}

/// How long a call with several addresses keeps trying them, by default.
pub const DEFAULT_FAILOVER_BUDGET: Duration = Duration::from_secs(10);

/// An operator client: one or several server addresses and the operator token.
///
/// With several addresses a call tries the one that last answered first (shared by clones),
/// then the others, and moves on only when the request was not carried out: the connection
/// failed (or the certificate was refused), or the server answered 503, 421 or 307 (a
/// follower without a leader, or naming the leader in `X-Bellwether-Leader`, which is tried
/// next when it is one of the configured addresses). A `GET` also moves on after any other
/// transport error or a 502/504; a write that got no answer is not sent again, since the
/// server may have carried it out. When a whole pass fails it waits (250 ms, doubling up to
/// 2 s) and passes again, starting no new attempt after the failover budget
/// ([`DEFAULT_FAILOVER_BUDGET`]). With one address a call is one attempt, as before.
#[derive(Debug, Clone)]
pub struct Client {
    servers: ServerList,
    current: Arc<AtomicUsize>,
    token: String,
    http: reqwest::Client,
    budget: Duration,
}

impl Client {
    /// `base` is the server's URL, such as `http://127.0.0.1:7878`, or a comma-separated list
    /// of them; an https server is verified against the system's trusted roots.
    pub fn new(base: &str, token: &str) -> Result<Client, ClientError> {
        Client::with_tls(base, token, &bellwether_tls::ClientTls::system())
    }

    /// As [`Client::new`], verifying an https server with `tls` (`--ca-file`, `--pin`).
    pub fn with_tls(
        base: &str,
        token: &str,
        tls: &bellwether_tls::ClientTls,
    ) -> Result<Client, ClientError> {
        let servers = ServerList::parse(&[base]).map_err(|e| ClientError::BadUrl {
            url: base.to_string(),
            reason: e.to_string(),
        })?;
        Client::with_servers(&servers, token, tls)
    }

    /// A client of every address of `servers`, verifying https ones with `tls`.
    pub fn with_servers(
        servers: &ServerList,
        token: &str,
        tls: &bellwether_tls::ClientTls,
    ) -> Result<Client, ClientError> {
        let https = |u: &String| u.to_ascii_lowercase().starts_with("https://");
        if !tls.is_default() {
            if let Some(plain) = servers.urls().iter().find(|u| !https(u)) {
                return Err(ClientError::BadUrl {
                    url: plain.clone(),
                    reason: "--ca-file and --pin verify an https:// server; this URL is plain http"
                        .into(),
                });
            }
        }
        let mut builder = reqwest::Client::builder();
        if servers.urls().iter().any(https) {
            builder = builder.use_preconfigured_tls(bellwether_tls::client_config(tls)?);
        }
        let http = builder
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            // A 307 names the leader: the client decides where to go, not reqwest.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ClientError::BadUrl {
                url: servers.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Client {
            servers: servers.clone(),
            current: Arc::new(AtomicUsize::new(0)),
            token: token.to_string(),
            http,
            budget: DEFAULT_FAILOVER_BUDGET,
        })
    }

    /// A call with several addresses starts no new attempt after `budget`.
    pub fn with_failover_budget(mut self, budget: Duration) -> Client {
        self.budget = budget;
        self
    }

    /// The base URL of the server that last answered (the first one a call tries), without a
    /// trailing slash.
    pub fn base(&self) -> &str {
        &self.servers.urls()[self.current.load(Ordering::Relaxed) % self.servers.len()]
    }

    /// Every address, in the order given.
    pub fn servers(&self) -> &ServerList {
        &self.servers
    }

    /// Sends `method path` (built further by `build`) to the servers as the type's text says,
    /// and decodes a success as JSON.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let read = method == Method::GET;
        let n = self.servers.len();
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(250);
        let mut failures: Vec<(usize, ClientError)> = Vec::new();
        loop {
            let mut pass = Pass::new(n, self.current.load(Ordering::Relaxed));
            while let Some(i) = pass.next() {
                if !failures.is_empty() && started.elapsed() >= self.budget {
                    break;
                }
                let base = &self.servers.urls()[i];
                let url = format!("{base}{path}");
                let req = build(self.http.request(method.clone(), &url)).bearer_auth(&self.token);
                let resp = match req.send().await {
                    Ok(resp) => resp,
                    Err(source) => {
                        let untrusted = bellwether_tls::certificate_error(&source);
                        let not_sent = source.is_connect() || untrusted.is_some();
                        let err = match untrusted {
                            Some(reason) => ClientError::Untrusted {
                                url: base.clone(),
                                reason,
                            },
                            None => ClientError::Unreachable { url, source },
                        };
                        if n == 1 || !(not_sent || read) {
                            return Err(err);
                        }
                        failures.push((i, err));
                        continue;
                    }
                };
                if n > 1 && verdict_for_status(resp.status().as_u16(), read) == Verdict::Next {
                    if let Some(j) = leader_hint(&resp).and_then(|h| self.servers.position(&h)) {
                        pass.prefer(j);
                    }
                    let err = answer::<serde_json::Value>(resp, url, base)
                        .await
                        .err()
                        .unwrap_or_else(|| ClientError::Api {
                            url: base.clone(),
                            status: 0,
                            message: "no answer".into(),
                        });
                    failures.push((i, err));
                    continue;
                }
                self.current.store(i, Ordering::Relaxed);
                return answer(resp, url, base).await;
            }
            if n == 1 || started.elapsed() + pause >= self.budget {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
        if n == 1 {
            let (_, err) = failures.pop().expect("one attempt was made");
            return Err(err);
        }
        let attempts: Vec<String> = failures
            .iter()
            .rev()
            .map(|(i, e)| match e {
                ClientError::Api {
                    status, message, ..
                } => format!("{} answered {status}: {message}", self.servers.urls()[*i]),
                other => other.to_string(),
            })
            .collect();
        Err(ClientError::NoServer {
            budget_ms: self.budget.as_millis() as u64,
            attempts: attempts.join("; "),
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, |r| r).await
    }

    /// `GET /api/v1/hosts`.
    pub async fn hosts(&self) -> Result<Vec<HostSummary>, ClientError> {
        self.get("/api/v1/hosts").await
    }

    /// `GET /api/v1/hosts/{name}`.
    pub async fn host(&self, name: &HostName) -> Result<HostDetail, ClientError> {
        self.get(&format!("/api/v1/hosts/{name}")).await
    }

    /// `GET /api/v1/hosts/{name}/drift`.
    pub async fn host_drift(&self, name: &HostName) -> Result<DriftScore, ClientError> {
        self.get(&format!("/api/v1/hosts/{name}/drift")).await
    }

    /// `GET /api/v1/fleet/drift`, grouping peers by `peer_label` when given.
    pub async fn fleet_drift(&self, peer_label: Option<&str>) -> Result<FleetDrift, ClientError> {
        self.call(Method::GET, "/api/v1/fleet/drift", |r| match peer_label {
            Some(l) => r.query(&[("peer_label", l)]),
            None => r,
        })
        .await
    }

    /// `POST /api/v1/baselines`.
    pub async fn capture_baselines(
        &self,
        body: &BaselineRequest,
    ) -> Result<BaselineResponse, ClientError> {
        self.call(Method::POST, "/api/v1/baselines", |r| r.json(body))
            .await
    }
}

/// A success decoded as JSON, or the error the answer carries.
async fn answer<T: DeserializeOwned>(
    resp: reqwest::Response,
    url: String,
    base: &str,
) -> Result<T, ClientError> {
    let status = resp.status();
    if status.is_success() {
        return resp
            .json()
            .await
            .map_err(|source| ClientError::Decode { url, source });
    }
    let text = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or(text);
    if status == StatusCode::UNAUTHORIZED {
        Err(ClientError::Unauthorized {
            url: base.to_owned(),
            message,
        })
    } else {
        Err(ClientError::Api {
            url,
            status: status.as_u16(),
            message,
        })
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

#[cfg(test)]
mod tests;
