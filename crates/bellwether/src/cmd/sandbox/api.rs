//! A small operator client for the v1 HTTP API, used by `sandbox` and `quickstart` to wait for
//! hosts, capture baselines and read drift.

use std::collections::BTreeMap;

use anyhow::Context as _;
use bellwether_model::DriftScore;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use std::path::Path;

use super::super::{Unreachable, UsageError};

pub struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HostSummary {
    pub name: String,
    #[serde(default)]
    pub last_seen_ms: Option<i64>,
    #[serde(default)]
    pub has_baseline: bool,
    #[serde(default)]
    pub overall_drift: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct FleetHost {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub score: Option<DriftScore>,
    #[serde(default)]
    pub has_baseline: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct FleetDrift {
    pub hosts: Vec<FleetHost>,
    #[serde(default)]
    pub peer_outliers: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Captured {
    pub captured: Vec<String>,
    #[serde(default)]
    pub skipped: Vec<serde_json::Value>,
}

impl Api {
    /// A client of `base`; an https server is verified with `ca_file` (the sandbox's CA)
    /// when given, else with the system's roots.
    pub fn new(base: &str, token: &str, ca_file: Option<&Path>) -> anyhow::Result<Api> {
        Ok(Api {
            client: http_client(base, ca_file)?,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        })
    }

    fn unreachable(url: &str, e: reqwest::Error) -> Unreachable {
        match bellwether_tls::certificate_error(&e) {
            Some(why) => Unreachable(format!(
                "could not verify the server's certificate at {url}: {why}"
            )),
            None => Unreachable(format!("could not reach {url}: {e}")),
        }
    }
}

/// A reqwest client with a 10 s timeout that verifies an https `base` with `ca_file`.
pub fn http_client(base: &str, ca_file: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder();
    if base.starts_with("https://") {
        let tls = bellwether_tls::ClientTls {
            ca_file: ca_file.map(Path::to_owned),
            pins: vec![],
        };
        builder = builder.use_preconfigured_tls(
            bellwether_tls::client_config(&tls).map_err(|e| UsageError(e.to_string()))?,
        );
    }
    builder
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .context("could not build the http client")
}

impl Api {
    /// GET `path`; `Ok(None)` on 404 and 409 (unknown host, no baseline yet).
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<Option<T>> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .client
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| Self::unreachable(&url, e))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::CONFLICT {
            return Ok(None);
        }
        let body = resp.text().await.with_context(|| format!("GET {url}"))?;
        if !status.is_success() {
            anyhow::bail!("GET {url}: {status}: {body}");
        }
        serde_json::from_str(&body)
            .with_context(|| format!("GET {url}: unexpected answer {body}"))
            .map(Some)
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .client
            .post(&url)
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .map_err(|e| Self::unreachable(&url, e))?;
        let status = resp.status();
        let text = resp.text().await.with_context(|| format!("POST {url}"))?;
        if !status.is_success() {
            anyhow::bail!("POST {url}: {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("POST {url}: unexpected answer {text}"))
    }
}
