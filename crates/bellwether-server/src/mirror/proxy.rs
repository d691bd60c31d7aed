//! The dependency's `bellwether proxy`, as the mirror task uses it (its admin API,
//! docs/proxy.md "Roles and switching the primary"): the per-backend figures of the last 10
//! seconds (requests/s, error rate, p50 latency, sessions: the health inputs), and the route
//! that makes an instance the primary and its readers the replicas that serve reads.
//!
//! The admin token is read from its file (`--proxy-token-file NAME=FILE`, the same files
//! patches use) at every call; the stored state only ever holds the file's name. A backend
//! is matched to an instance by its name (the instance id, for the mirrors the route adds) or
//! by its address (the instance's endpoint, for the primary the operator configured).

use std::collections::BTreeMap;
use std::time::Duration;

use bellwether_engine::mirror::Backend;
use bellwether_model::mirror::ProxyRef;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::patch::proxy::read_token_file;
use crate::AppState;

/// How long a switch waits for the sessions busy on the previous primary.
const SWITCH_WAIT: &str = "5s";

/// One backend's figures over the proxy's window.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProxyPoint {
    pub requests_per_s: Option<f64>,
    pub error_rate: Option<f64>,
    pub latency_ms: Option<f64>,
    /// Client sessions on it now.
    pub sessions: Option<u32>,
}

#[derive(Deserialize)]
struct BackendView {
    name: String,
    address: String,
    #[serde(default)]
    window: Option<Window>,
    #[serde(default)]
    metrics: Option<MetricsView>,
}

#[derive(Deserialize)]
struct Window {
    seconds: f64,
    requests_per_second: f64,
    #[serde(default)]
    error_rate: Option<f64>,
    #[serde(default)]
    p50_seconds: Option<f64>,
}

#[derive(Deserialize)]
struct MetricsView {
    #[serde(default)]
    active_connections: Option<u64>,
}

fn point(b: &BackendView) -> ProxyPoint {
    let w = b.window.as_ref().filter(|w| w.seconds > 0.0);
    ProxyPoint {
        requests_per_s: w.map(|w| w.requests_per_second),
        error_rate: w.and_then(|w| w.error_rate),
        latency_ms: w.and_then(|w| w.p50_seconds).map(|s| s * 1000.0),
        sessions: b
            .metrics
            .as_ref()
            .and_then(|m| m.active_connections)
            .map(|n| n.min(u32::MAX as u64) as u32),
    }
}

fn find<'a>(views: &'a [BackendView], b: &Backend) -> Option<&'a BackendView> {
    views
        .iter()
        .find(|v| v.name == b.instance)
        .or_else(|| views.iter().find(|v| v.address == b.endpoint))
}

struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

fn client(state: &AppState, p: &ProxyRef) -> Result<Client, String> {
    let file = state.patches.proxy_token_file(&p.token).ok_or_else(|| {
        format!(
            "no proxy token named {:?}: start the server with --proxy-token-file {}=FILE",
            p.token, p.token
        )
    })?;
    let token = read_token_file(&file).map_err(|e| format!("proxy admin token: {e}"))?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    Ok(Client {
        base: p.admin_url.trim_end_matches('/').to_string(),
        token,
        http,
    })
}

impl Client {
    async fn call(&self, req: reqwest::RequestBuilder, timeout: Duration) -> Result<Value, String> {
        let resp = req
            .bearer_auth(&self.token)
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
                "the proxy's admin API at {} answered {status}: {}",
                self.base,
                body["error"].as_str().unwrap_or("no message")
            ))
        }
    }
}

impl Client {
    async fn views(&self, timeout: Duration) -> Result<Vec<BackendView>, String> {
        let v = self
            .call(self.http.get(format!("{}/backends", self.base)), timeout)
            .await?;
        serde_json::from_value(v).map_err(|e| format!("the proxy's backends: {e}"))
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        self.call(
            self.http.post(format!("{}{path}", self.base)).json(&body),
            Duration::from_secs(15),
        )
        .await
    }
}

/// The proxy's figures of each instance (by id) that is one of its backends.
pub(crate) async fn backends(
    state: &AppState,
    p: &ProxyRef,
    instances: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<BTreeMap<String, ProxyPoint>, String> {
    let c = client(state, p)?;
    let views = c.views(timeout).await?;
    let mut out = BTreeMap::new();
    for (id, endpoint) in instances {
        let b = Backend {
            instance: id.clone(),
            endpoint: endpoint.clone(),
        };
        if let Some(v) = find(&views, &b) {
            out.insert(id.clone(), point(v));
        }
    }
    Ok(out)
}

/// Makes `primary` the proxy's primary (the previous one fenced at the proxy: no traffic) and
/// `readers` its ready replicas (active-active when there are any); an instance the proxy
/// does not have yet is added under its id. The proxy's switch waits for the sessions busy
/// on the previous primary (bounded), so no command is cut in the middle.
pub(crate) async fn route(
    state: &AppState,
    p: &ProxyRef,
    primary: &Backend,
    readers: &[Backend],
) -> Result<Value, String> {
    let c = client(state, p)?;
    let mut views = c.views(Duration::from_secs(5)).await?;
    let mut added = Vec::new();
    for b in std::iter::once(primary).chain(readers) {
        if find(&views, b).is_none() {
            c.call(
                c.http
                    .put(format!("{}/backends/{}", c.base, b.instance))
                    .json(&json!({ "address": b.endpoint, "role": "replica" })),
                Duration::from_secs(5),
            )
            .await?;
            added.push(b.instance.clone());
        }
    }
    if !added.is_empty() {
        views = c.views(Duration::from_secs(5)).await?;
    }
    let name = |b: &Backend| find(&views, b).map(|v| v.name.clone());
    let primary_name =
        name(primary).ok_or_else(|| format!("the proxy has no backend at {}", primary.endpoint))?;
    let reader_names: Vec<String> = readers.iter().filter_map(name).collect();
    let switched = c
        .post(
            "/primary",
            json!({ "backend": primary_name, "fence": true, "wait": SWITCH_WAIT }),
        )
        .await?;
    let previous = switched["previous"].as_str().map(str::to_string);
    for v in &views {
        if v.name == primary_name || previous.as_deref() == Some(v.name.as_str()) {
            continue;
        }
        let admin = if reader_names.contains(&v.name) {
            "ready"
        } else {
            "maintenance"
        };
        c.post(&format!("/backends/{}", v.name), json!({ "admin": admin }))
            .await?;
    }
    let mode = if reader_names.is_empty() {
        "active-passive"
    } else {
        "active-active"
    };
    c.post("/mode", json!({ "mode": mode })).await?;
    Ok(json!({
        "routed": true,
        "primary": primary_name,
        "readers": reader_names,
        "added": added,
        "mode": mode,
        "proxy": switched,
    }))
}
