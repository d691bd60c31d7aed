//! A small async client of the operator API, for the `bellwether` CLI (and tests).
//!
//! Errors keep apart what the operator must act on differently: a server that cannot be
//! reached, a token that was refused, and an error the API answered with.

use bellwether_model::{DriftScore, HostName};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use crate::types::{BaselineRequest, BaselineResponse, FleetDrift, HostDetail, HostSummary};

mod rollout_calls;
pub mod sandbox_calls;
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
}

/// An operator client: a base URL and the operator token.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// `base` is the server's URL, such as `http://127.0.0.1:7878`; an https server is
    /// verified against the system's trusted roots.
    pub fn new(base: &str, token: &str) -> Result<Client, ClientError> {
        Client::with_tls(base, token, &bellwether_tls::ClientTls::system())
    }

    /// As [`Client::new`], verifying an https server with `tls` (`--ca-file`, `--pin`).
    pub fn with_tls(
        base: &str,
        token: &str,
        tls: &bellwether_tls::ClientTls,
    ) -> Result<Client, ClientError> {
        let trimmed = base.trim_end_matches('/');
        if !(trimmed.starts_with("http://") || trimmed.starts_with("https://")) {
            return Err(ClientError::BadUrl {
                url: base.to_string(),
                reason: "it must start with http:// or https://".into(),
            });
        }
        let mut builder = reqwest::Client::builder();
        if trimmed.starts_with("https://") {
            builder = builder.use_preconfigured_tls(bellwether_tls::client_config(tls)?);
        } else if !tls.is_default() {
            return Err(ClientError::BadUrl {
                url: base.to_string(),
                reason: "--ca-file and --pin verify an https:// server; this URL is plain http"
                    .into(),
            });
        }
        let http = builder
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| ClientError::BadUrl {
                url: base.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Client {
            base: trimmed.to_string(),
            token: token.to_string(),
            http,
        })
    }

    /// The server's base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn call<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: String,
    ) -> Result<T, ClientError> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|source| match bellwether_tls::certificate_error(&source) {
                Some(reason) => ClientError::Untrusted {
                    url: self.base.clone(),
                    reason,
                },
                None => ClientError::Unreachable {
                    url: url.clone(),
                    source,
                },
            })?;
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
                url: self.base.clone(),
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

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        self.call(self.http.get(&url), url).await
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
        let url = format!("{}/api/v1/fleet/drift", self.base);
        let mut req = self.http.get(&url);
        if let Some(l) = peer_label {
            req = req.query(&[("peer_label", l)]);
        }
        self.call(req, url).await
    }

    /// `POST /api/v1/baselines`.
    pub async fn capture_baselines(
        &self,
        body: &BaselineRequest,
    ) -> Result<BaselineResponse, ClientError> {
        let url = format!("{}/api/v1/baselines", self.base);
        self.call(self.http.post(&url).json(body), url).await
    }
}
