//! Client calls of the shadow API (`bellwether shadow
//! add|list|show|rollback|predict|failure|points|history|remove`).

use bellwether_model::shadow::ShadowSpec;
use reqwest::Method;

use super::{Client, ClientError};
use crate::shadow::{
    FailureRequest, PredictRequest, RollbackRequest, ShadowDetail, ShadowHistory, ShadowPoints,
    ShadowSummary,
};

/// The path of shadow `name` (names are `[a-z0-9-]`; anything else is percent-encoded and the
/// server answers 400 naming it).
fn path(name: &str, rest: &str) -> String {
    let mut out = String::from("/api/v1/shadow/shadows/");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push_str(rest);
    out
}

impl Client {
    /// `POST /api/v1/shadow/shadows`: declares a shadow (its host must have enrolled); its
    /// task starts it on the host's agent.
    pub async fn shadow_add(&self, spec: &ShadowSpec) -> Result<ShadowDetail, ClientError> {
        self.call(Method::POST, "/api/v1/shadow/shadows", |r| r.json(spec))
            .await
    }

    /// `GET /api/v1/shadow/shadows`, by name (removed ones still stopping included).
    pub async fn shadow_list(&self) -> Result<Vec<ShadowSummary>, ClientError> {
        self.get("/api/v1/shadow/shadows").await
    }

    /// `GET /api/v1/shadow/shadows/{name}`.
    pub async fn shadow_show(&self, name: &str) -> Result<ShadowDetail, ClientError> {
        self.get(&path(name, "")).await
    }

    /// `GET /api/v1/shadow/shadows/{name}/points`.
    pub async fn shadow_points(&self, name: &str) -> Result<ShadowPoints, ClientError> {
        self.get(&path(name, "/points")).await
    }

    /// `GET /api/v1/shadow/shadows/{name}/history?limit=N`.
    pub async fn shadow_history(
        &self,
        name: &str,
        limit: Option<i64>,
    ) -> Result<ShadowHistory, ClientError> {
        let q: Vec<(&str, String)> = limit
            .map(|l| ("limit", l.to_string()))
            .into_iter()
            .collect();
        self.call(Method::GET, &path(name, "/history"), |r| r.query(&q))
            .await
    }

    /// `POST /api/v1/shadow/shadows/{name}/rollback`.
    pub async fn shadow_rollback(
        &self,
        name: &str,
        req: &RollbackRequest,
    ) -> Result<ShadowDetail, ClientError> {
        self.call(Method::POST, &path(name, "/rollback"), |r| r.json(req))
            .await
    }

    /// `POST /api/v1/shadow/shadows/{name}/predict`.
    pub async fn shadow_predict(
        &self,
        name: &str,
        req: &PredictRequest,
    ) -> Result<ShadowDetail, ClientError> {
        self.call(Method::POST, &path(name, "/predict"), |r| r.json(req))
            .await
    }

    /// `POST /api/v1/shadow/shadows/{name}/failure`.
    pub async fn shadow_failure(
        &self,
        name: &str,
        req: &FailureRequest,
    ) -> Result<ShadowDetail, ClientError> {
        self.call(Method::POST, &path(name, "/failure"), |r| r.json(req))
            .await
    }

    /// `DELETE /api/v1/shadow/shadows/{name}`: its task stops the shadow on the agent.
    pub async fn shadow_remove(&self, name: &str) -> Result<ShadowDetail, ClientError> {
        self.call(Method::DELETE, &path(name, ""), |r| r).await
    }
}
