//! Client calls of the model, risk and rollout API.

use bellwether_store::ModelInfo;

use reqwest::Method;

use super::{Client, ClientError};
use crate::model_api::{ForgiveRequest, ForgiveResponse, ImportResponse, RiskResponse};

impl Client {
    /// `POST /api/v1/history/import` with a history CSV; `label` names the outcome column.
    pub async fn import_history(
        &self,
        csv: Vec<u8>,
        label: Option<&str>,
    ) -> Result<ImportResponse, ClientError> {
        self.call(Method::POST, "/api/v1/history/import", |r| {
            let r = r
                .header(reqwest::header::CONTENT_TYPE, "text/csv")
                .body(csv.clone());
            match label {
                Some(l) => r.query(&[("label", l)]),
                None => r,
            }
        })
        .await
    }

    /// `POST /api/v1/model/train`: trains from the stored outcomes.
    pub async fn train_model(&self) -> Result<ModelInfo, ClientError> {
        self.call(Method::POST, "/api/v1/model/train", |r| {
            r.timeout(std::time::Duration::from_secs(600))
        })
        .await
    }

    /// `GET /api/v1/models`, newest first.
    pub async fn models(&self) -> Result<Vec<ModelInfo>, ClientError> {
        self.get("/api/v1/models").await
    }

    /// `GET /api/v1/risk` for an update (`update_type` is major, minor or patch), over `hosts`
    /// or every host when empty.
    pub async fn risk(
        &self,
        update: &str,
        version: &str,
        update_type: Option<&str>,
        hosts: &[String],
        depends_on: &[String],
    ) -> Result<RiskResponse, ClientError> {
        let mut q: Vec<(&str, String)> =
            vec![("update", update.into()), ("version", version.into())];
        if let Some(t) = update_type {
            q.push(("type", t.into()));
        }
        if !hosts.is_empty() {
            q.push(("hosts", hosts.join(",")));
        }
        if !depends_on.is_empty() {
            q.push(("depends_on", depends_on.join(",")));
        }
        self.call(Method::GET, "/api/v1/risk", |r| r.query(&q))
            .await
    }

    /// `POST /api/v1/risk/forgive`: clears a host's direct evidence for one update and
    /// version, with a reason.
    pub async fn forgive(&self, req: &ForgiveRequest) -> Result<ForgiveResponse, ClientError> {
        self.call(Method::POST, "/api/v1/risk/forgive", |r| r.json(req))
            .await
    }

    /// `GET` of any operator path, as JSON.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.get(path).await
    }

    /// `POST` of a JSON body (or none) to any operator path; the answer as JSON (`null` for
    /// an empty answer).
    pub async fn post_json(
        &self,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        self.call(Method::POST, path, |r| match body {
            Some(b) => r.json(b),
            None => r,
        })
        .await
    }
}
