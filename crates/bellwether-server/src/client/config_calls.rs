//! Client calls of the configuration API (`bellwether config …`).

use bellwether_config::graph::Graph;
use bellwether_config::snapshot::Snapshot;
use reqwest::Method;
use serde_json::Value;

use super::{Client, ClientError};
use crate::types::{
    ConfigCommandRequest, ConfigSourceSummary, ConfigTaskRequest, ConfigTaskStatus,
    RestoreSnapshotRequest, SimulateRequest, TakeSnapshotRequest,
};

impl Client {
    /// `GET /api/v1/config/sources`.
    pub async fn config_sources(&self) -> Result<Vec<ConfigSourceSummary>, ClientError> {
        self.get("/api/v1/config/sources").await
    }

    /// `GET /api/v1/config/changes`: the change stream, newest first, or oldest after the
    /// event id `after` first.
    pub async fn config_changes(
        &self,
        host: Option<&str>,
        source: Option<&str>,
        after: Option<i64>,
        limit: Option<i64>,
    ) -> Result<Vec<bellwether_store::Event>, ClientError> {
        let q = list_query(host, source, after, limit);
        self.call(Method::GET, "/api/v1/config/changes", |r| r.query(&q))
            .await
    }

    /// `GET /api/v1/config/snapshots`: one row per snapshot, newest first.
    pub async fn config_snapshots(
        &self,
        host: Option<&str>,
        source: Option<&str>,
    ) -> Result<Vec<Value>, ClientError> {
        let q = list_query(host, source, None, None);
        self.call(Method::GET, "/api/v1/config/snapshots", |r| r.query(&q))
            .await
    }

    /// `GET /api/v1/config/snapshots/{id}`.
    pub async fn config_snapshot(&self, id: &str) -> Result<Snapshot, ClientError> {
        self.get(&format!("/api/v1/config/snapshots/{id}")).await
    }

    /// `POST /api/v1/config/snapshots`.
    pub async fn config_take_snapshot(
        &self,
        body: &TakeSnapshotRequest,
    ) -> Result<Snapshot, ClientError> {
        self.call(Method::POST, "/api/v1/config/snapshots", |r| r.json(body))
            .await
    }

    /// `POST /api/v1/config/snapshots/{id}/restore`: a config task that sets the snapshot's
    /// values where they differ from the latest report.
    pub async fn config_restore(
        &self,
        id: &str,
        body: &RestoreSnapshotRequest,
    ) -> Result<ConfigTaskStatus, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/v1/config/snapshots/{id}/restore"),
            |r| r.json(body),
        )
        .await
    }

    /// `GET /api/v1/config/graph` as JSON (GraphML and Cypher are `Graph::to_graphml` and
    /// `Graph::to_cypher` of it, the same text the server answers with `format=`).
    pub async fn config_graph(
        &self,
        host: &str,
        source: &str,
        around: Option<&str>,
        depth: Option<usize>,
    ) -> Result<Graph, ClientError> {
        let mut q: Vec<(&str, String)> = vec![("host", host.into()), ("source", source.into())];
        if let Some(a) = around {
            q.push(("around", a.into()));
        }
        if let Some(d) = depth {
            q.push(("depth", d.to_string()));
        }
        self.call(Method::GET, "/api/v1/config/graph", |r| r.query(&q))
            .await
    }

    /// `POST /api/v1/config/simulate`: the `SimReport` JSON with `graph_version` and
    /// `performance_reason`.
    pub async fn config_simulate(&self, body: &SimulateRequest) -> Result<Value, ClientError> {
        self.call(Method::POST, "/api/v1/config/simulate", |r| r.json(body))
            .await
    }

    /// `POST /api/v1/config/tasks`.
    pub async fn config_apply(
        &self,
        body: &ConfigTaskRequest,
    ) -> Result<ConfigTaskStatus, ClientError> {
        self.call(Method::POST, "/api/v1/config/tasks", |r| r.json(body))
            .await
    }

    /// `GET /api/v1/config/tasks`, newest first.
    pub async fn config_tasks(&self) -> Result<Vec<Value>, ClientError> {
        self.get("/api/v1/config/tasks").await
    }

    /// `GET /api/v1/config/tasks/{id}`.
    pub async fn config_task(&self, id: &str) -> Result<ConfigTaskStatus, ClientError> {
        self.get(&format!("/api/v1/config/tasks/{id}")).await
    }

    /// `POST /api/v1/config/tasks/{id}/abort`.
    pub async fn config_abort(
        &self,
        id: &str,
        reason: Option<&str>,
    ) -> Result<ConfigTaskStatus, ClientError> {
        let body = ConfigCommandRequest {
            reason: reason.map(str::to_string),
        };
        self.call(
            Method::POST,
            &format!("/api/v1/config/tasks/{id}/abort"),
            |r| r.json(&body),
        )
        .await
    }

    /// `POST /api/v1/config/tasks/{id}/revert`.
    pub async fn config_revert(
        &self,
        id: &str,
        reason: Option<&str>,
    ) -> Result<ConfigTaskStatus, ClientError> {
        let body = ConfigCommandRequest {
            reason: reason.map(str::to_string),
        };
        self.call(
            Method::POST,
            &format!("/api/v1/config/tasks/{id}/revert"),
            |r| r.json(&body),
        )
        .await
    }
}

fn list_query(
    host: Option<&str>,
    source: Option<&str>,
    after: Option<i64>,
    limit: Option<i64>,
) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    if let Some(h) = host {
        q.push(("host", h.to_string()));
    }
    if let Some(s) = source {
        q.push(("source", s.to_string()));
    }
    if let Some(a) = after {
        q.push(("after", a.to_string()));
    }
    if let Some(l) = limit {
        q.push(("limit", l.to_string()));
    }
    q
}
