//! Client calls of the token API (admin) and the event log.

use bellwether_store::{Event, TokenInfo};

use reqwest::Method;

use super::{Client, ClientError};
use crate::tokens::{CreateToken, CreatedToken};

impl Client {
    /// `GET /api/v1/tokens` (admin).
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, ClientError> {
        self.get("/api/v1/tokens").await
    }

    /// `POST /api/v1/tokens` (admin): a new viewer, operator or admin token.
    pub async fn create_token(&self, role: &str, name: &str) -> Result<CreatedToken, ClientError> {
        let body = CreateToken {
            role: role.to_string(),
            name: name.to_string(),
        };
        self.call(Method::POST, "/api/v1/tokens", |r| r.json(&body))
            .await
    }

    /// `DELETE /api/v1/tokens/{id}` (admin).
    pub async fn revoke_token(&self, id: i64) -> Result<TokenInfo, ClientError> {
        self.call(Method::DELETE, &format!("/api/v1/tokens/{id}"), |r| r)
            .await
    }

    /// `GET /api/v1/events`, newest first, optionally of one kind (such as `audit`).
    pub async fn events(&self, kind: Option<&str>, limit: i64) -> Result<Vec<Event>, ClientError> {
        self.call(Method::GET, "/api/v1/events", |r| {
            let r = r.query(&[("limit", limit.to_string())]);
            match kind {
                Some(k) => r.query(&[("kind", k)]),
                None => r,
            }
        })
        .await
    }
}
