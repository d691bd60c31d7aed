//! Client calls of the alerts API (`bellwether alerts list|add|remove|test|deliveries`).

use reqwest::Method;

use super::{Client, ClientError};
use crate::alerts::{DeliveryLog, NewRule, RuleView, TestResult};

/// The path of rule `id` (an id or a name; anything but `[A-Za-z0-9._-]` is
/// percent-encoded and the server answers 404 or 400 naming it).
fn path(id: &str, rest: &str) -> String {
    let mut out = String::from("/api/v1/alerts/rules/");
    for b in id.bytes() {
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
    /// `GET /api/v1/alerts/rules`: the server-wide rules, URLs without their secrets.
    pub async fn alert_rules(&self) -> Result<Vec<RuleView>, ClientError> {
        self.get("/api/v1/alerts/rules").await
    }

    /// `POST /api/v1/alerts/rules`.
    pub async fn alert_add(&self, rule: &NewRule) -> Result<RuleView, ClientError> {
        self.call(Method::POST, "/api/v1/alerts/rules", |r| r.json(rule))
            .await
    }

    /// `DELETE /api/v1/alerts/rules/{id}` (an id or a name).
    pub async fn alert_remove(&self, id: &str) -> Result<RuleView, ClientError> {
        self.call(Method::DELETE, &path(id, ""), |r| r).await
    }

    /// `POST /api/v1/alerts/rules/{id}/test`: one test POST now, logged.
    pub async fn alert_test(&self, id: &str) -> Result<TestResult, ClientError> {
        self.call(Method::POST, &path(id, "/test"), |r| r).await
    }

    /// `GET /api/v1/alerts/deliveries?rule=&event=&limit=`, newest first.
    pub async fn alert_deliveries(
        &self,
        rule: Option<&str>,
        event: Option<i64>,
        limit: i64,
    ) -> Result<DeliveryLog, ClientError> {
        let mut q: Vec<(&str, String)> = vec![("limit", limit.to_string())];
        if let Some(r) = rule {
            q.push(("rule", r.to_string()));
        }
        if let Some(e) = event {
            q.push(("event", e.to_string()));
        }
        self.call(Method::GET, "/api/v1/alerts/deliveries", |r| r.query(&q))
            .await
    }
}
