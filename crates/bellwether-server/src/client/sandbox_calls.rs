//! Client calls the sandbox and the quickstart need: whether a host has reported (its profile
//! or drift, `None` until it has), and starting, following and resuming a rollout.

use bellwether_model::{DriftScore, HostName, HostProfile};
use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::{Client, ClientError};
use crate::rollout::{CreateRollout, ReportResponse, StatusResponse};

/// The answer to `POST /api/v1/rollouts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutCreated {
    pub id: String,
    /// The model version that scored the hosts; `None` without a model.
    pub model_version: Option<i64>,
    /// How many hosts the plan targets.
    pub hosts: usize,
}

/// `Ok(None)` for the 404 and 409 of a host the server does not know yet, or that has no
/// profile or baseline yet.
fn not_yet<T>(r: Result<T, ClientError>) -> Result<Option<T>, ClientError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(ClientError::Api {
            status: 404 | 409, ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Client {
    /// `GET /api/v1/hosts/{name}/profile`; `None` until the host's agent has reported one.
    pub async fn host_profile(&self, name: &HostName) -> Result<Option<HostProfile>, ClientError> {
        not_yet(self.get(&format!("/api/v1/hosts/{name}/profile")).await)
    }

    /// `GET /api/v1/hosts/{name}/drift`; `None` while the host is unknown or has no baseline.
    pub async fn host_drift_if_any(
        &self,
        name: &HostName,
    ) -> Result<Option<DriftScore>, ClientError> {
        not_yet(self.host_drift(name).await)
    }

    /// `POST /api/v1/rollouts`: starts a rollout of a plan (YAML); `file` names it in errors.
    pub async fn start_rollout(
        &self,
        plan_yaml: &str,
        file: Option<&str>,
    ) -> Result<RolloutCreated, ClientError> {
        let body = CreateRollout {
            plan_yaml: plan_yaml.to_string(),
            file: file.map(str::to_string),
        };
        self.call(Method::POST, "/api/v1/rollouts", |r| r.json(&body))
            .await
    }

    /// `GET /api/v1/rollouts/{id}/report`: every host's story and the events so far.
    pub async fn rollout_report(&self, id: &str) -> Result<ReportResponse, ClientError> {
        self.get(&format!("/api/v1/rollouts/{id}/report")).await
    }

    /// `POST /api/v1/rollouts/{id}/resume`: the rollout's status after the command.
    pub async fn resume_rollout(&self, id: &str) -> Result<StatusResponse, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/v1/rollouts/{id}/resume"),
            |r| r,
        )
        .await
    }
}
