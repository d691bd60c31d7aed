//! The client of a `bellwether proxy`'s admin API, as a patch drives it: read the backends
//! (health and counters), set a backend's weight and admin state, drain one.
//!
//! The admin token is read from its file (`--proxy-token-file NAME=FILE`) at every call, so
//! a rotated token is picked up and the token itself is never held in a patch's stored state.
//! The file must be private to its owner, as the proxy itself requires of its token file.

use std::path::PathBuf;
use std::time::Duration;

use bellwether_proxy::metrics::HistSnapshot;
use serde::Deserialize;
use serde_json::{json, Value};

/// One backend as `GET /backends` answers (the fields a patch uses).
#[derive(Debug, Clone, Deserialize)]
pub struct BackendPoint {
    pub name: String,
    pub healthy: bool,
    #[serde(default)]
    pub checks: u64,
    #[serde(default)]
    pub consecutive_ok: u32,
    #[serde(default)]
    pub last_error: Option<String>,
    pub metrics: MetricsPoint,
}

/// A backend's cumulative counters.
#[derive(Debug, Clone, Deserialize)]
pub struct MetricsPoint {
    pub queries: u64,
    pub query_errors: u64,
    #[serde(default)]
    pub graceful_closes: u64,
    /// Absent from a proxy older than the histogram in its admin API: then no latency.
    #[serde(default)]
    pub query_latency_histogram: HistSnapshot,
}

/// A proxy's admin API.
#[derive(Debug, Clone)]
pub struct ProxyClient {
    base: String,
    token_file: PathBuf,
    http: reqwest::Client,
}

/// Reads an admin token file: owner-only permissions (no access for others, no write for the
/// group), one line of at least 16 printable characters.
pub fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read the token file: {e}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o027 != 0 {
        return Err(format!(
            "the token file has mode {mode:04o}, which lets others read or change it; chmod 600 it"
        ));
    }
    if meta.len() > 4096 {
        return Err("the token file is larger than 4 KiB; it should hold one token".into());
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read the token file: {e}"))?;
    let token = text.trim_end_matches(['\n', '\r']);
    if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "the token file must hold one token of at least 16 printable characters".into(),
        );
    }
    Ok(token.to_string())
}

impl ProxyClient {
    /// `base` is `http://HOST:PORT` or `https://…` (verified against the system's roots).
    pub fn new(base: &str, token_file: PathBuf) -> Result<ProxyClient, String> {
        let base = base.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!(
                "proxy admin URL {}: it must start with http:// or https://",
                bellwether_model::text::quote(base)
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(ProxyClient {
            base: base.to_string(),
            token_file,
            http,
        })
    }

    async fn call(&self, req: reqwest::RequestBuilder, timeout: Duration) -> Result<Value, String> {
        let token = read_token_file(&self.token_file).map_err(|e| {
            tracing::warn!(file = %self.token_file.display(), error = %e, "Cannot use a proxy token file.");
            format!("proxy admin token: {e}")
        })?;
        let resp = req
            .bearer_auth(token)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| format!("cannot reach the proxy's admin API at {}: {e}", self.base))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!(
                "the proxy's admin API answered {status}: {}",
                body["error"].as_str().unwrap_or("no message")
            ))
        }
    }

    /// `GET /backends`.
    pub async fn backends(&self) -> Result<Vec<BackendPoint>, String> {
        let v = self
            .call(
                self.http.get(format!("{}/backends", self.base)),
                Duration::from_secs(5),
            )
            .await?;
        serde_json::from_value(v).map_err(|e| format!("the proxy's backends: {e}"))
    }

    /// `GET /backends` as the proxy answers it, every field kept (the dashboard shows it).
    pub async fn backends_raw(&self) -> Result<Value, String> {
        self.call(
            self.http.get(format!("{}/backends", self.base)),
            Duration::from_secs(5),
        )
        .await
    }

    /// `GET /connections`: the proxy's connection registry, as it answers it.
    pub async fn connections(&self) -> Result<Value, String> {
        self.call(
            self.http.get(format!("{}/connections", self.base)),
            Duration::from_secs(5),
        )
        .await
    }

    /// `GET /backends/{name}`.
    pub async fn backend(&self, name: &str) -> Result<BackendPoint, String> {
        let v = self
            .call(
                self.http.get(format!("{}/backends/{name}", self.base)),
                Duration::from_secs(5),
            )
            .await?;
        serde_json::from_value(v).map_err(|e| format!("the proxy's backend {name}: {e}"))
    }

    /// `POST /backends/{name}` with a weight and/or an admin state.
    pub async fn set(
        &self,
        name: &str,
        weight: Option<u32>,
        admin: Option<&str>,
    ) -> Result<Value, String> {
        let mut body = json!({});
        if let Some(w) = weight {
            body["weight"] = json!(w);
        }
        if let Some(a) = admin {
            body["admin"] = json!(a);
        }
        self.call(
            self.http
                .post(format!("{}/backends/{name}", self.base))
                .json(&body),
            Duration::from_secs(5),
        )
        .await
    }

    /// `POST /backends/{name}/drain?timeout=…`: answers once drained or at the timeout.
    pub async fn drain(&self, name: &str, timeout_ms: u64) -> Result<Value, String> {
        let timeout_ms = timeout_ms.min(3_600_000);
        self.call(
            self.http
                .post(format!("{}/backends/{name}/drain", self.base))
                .query(&[("timeout", format!("{timeout_ms}ms"))]),
            Duration::from_millis(timeout_ms) + Duration::from_secs(30),
        )
        .await
    }
}
