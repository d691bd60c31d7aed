//! Client calls of the token API (admin) and the event log.

use bellwether_store::{Event, TokenInfo};

use super::{Client, ClientError};
use crate::tokens::{CreateToken, CreatedToken};

impl Client {
    /// `GET /api/v1/tokens` (admin).
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, ClientError> {
        self.get("/api/v1/tokens").await
    }

    /// `POST /api/v1/tokens` (admin): a new viewer, operator or admin token.
    pub async fn create_token(&self, role: &str, name: &str) -> Result<CreatedToken, ClientError> {
        let url = format!("{}/api/v1/tokens", self.base);
        let body = CreateToken {
            role: role.to_string(),
            name: name.to_string(),
        };
        self.call(self.http.post(&url).json(&body), url).await
    }

    /// `DELETE /api/v1/tokens/{id}` (admin).
    pub async fn revoke_token(&self, id: i64) -> Result<TokenInfo, ClientError> {
        let url = format!("{}/api/v1/tokens/{id}", self.base);
        self.call(self.http.delete(&url), url).await
    }

    /// `GET /api/v1/events`, newest first, optionally of one kind (such as `audit`).
    pub async fn events(&self, kind: Option<&str>, limit: i64) -> Result<Vec<Event>, ClientError> {
        let url = format!("{}/api/v1/events", self.base);
        let mut req = self.http.get(&url).query(&[("limit", limit.to_string())]);
        if let Some(k) = kind {
            req = req.query(&[("kind", k)]);
        }
        self.call(req, url).await
    }
}
