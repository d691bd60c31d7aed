//! Client calls of the mirror API (`bellwether mirror …`).

use bellwether_model::mirror::DependencySpec;
use reqwest::Method;
use serde_json::{json, Map, Value};

use super::{Client, ClientError};
use crate::mirror::{DependencyDetail, DependencyHistory, DependencySummary, FailoverRequest};

/// A dependency name as one path segment (names are `[a-z0-9-]`; anything else is encoded
/// and the server answers 400 naming it).
fn seg(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// `POST /api/v1/mirror/dependencies`: declares a dependency (its primary must answer).
    pub async fn mirror_add(&self, spec: &DependencySpec) -> Result<DependencyDetail, ClientError> {
        self.call(Method::POST, "/api/v1/mirror/dependencies", |r| {
            r.json(spec)
        })
        .await
    }

    /// `GET /api/v1/mirror/dependencies`, by name (removed ones still retiring included).
    pub async fn mirror_list(&self) -> Result<Vec<DependencySummary>, ClientError> {
        self.get("/api/v1/mirror/dependencies").await
    }

    /// `GET /api/v1/mirror/dependencies/{name}`.
    pub async fn mirror_show(&self, name: &str) -> Result<DependencyDetail, ClientError> {
        self.get(&format!("/api/v1/mirror/dependencies/{}", seg(name)))
            .await
    }

    /// `PATCH /api/v1/mirror/dependencies/{name}` with the policy fields to change.
    pub async fn mirror_set(
        &self,
        name: &str,
        policy: &Map<String, Value>,
    ) -> Result<DependencyDetail, ClientError> {
        let body = json!({ "policy": policy });
        self.call(
            Method::PATCH,
            &format!("/api/v1/mirror/dependencies/{}", seg(name)),
            |r| r.json(&body),
        )
        .await
    }

    /// `POST /api/v1/mirror/dependencies/{name}/failover`.
    pub async fn mirror_failover(
        &self,
        name: &str,
        req: &FailoverRequest,
    ) -> Result<DependencyDetail, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/v1/mirror/dependencies/{}/failover", seg(name)),
            |r| r.json(req),
        )
        .await
    }

    /// `GET /api/v1/mirror/dependencies/{name}/history?limit=N`.
    pub async fn mirror_history(
        &self,
        name: &str,
        limit: Option<i64>,
    ) -> Result<DependencyHistory, ClientError> {
        let q: Vec<(&str, String)> = limit
            .map(|l| ("limit", l.to_string()))
            .into_iter()
            .collect();
        self.call(
            Method::GET,
            &format!("/api/v1/mirror/dependencies/{}/history", seg(name)),
            |r| r.query(&q),
        )
        .await
    }

    /// `DELETE /api/v1/mirror/dependencies/{name}`: its task retires the mirrors and settles.
    pub async fn mirror_remove(&self, name: &str) -> Result<DependencyDetail, ClientError> {
        self.call(
            Method::DELETE,
            &format!("/api/v1/mirror/dependencies/{}", seg(name)),
            |r| r,
        )
        .await
    }
}
