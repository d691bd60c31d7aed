//! Who may call which route, and the audit log of who did.
//!
//! Every route has one rule in [`RULES`]: public, the enrolment token, an agent token, or a
//! person's role (viewer < operator < admin, each allowed what the ones below it are). The
//! [`authorize`] middleware runs on every matched route before its handler (so before the
//! body is read): no token or an unknown one is refused with 401, a valid token whose role
//! the rule does not allow with 403, and a route without a rule with 500 (fail closed: a new
//! route must be given a rule before anyone can call it). It then writes an `audit` event for
//! every refusal and for every state-changing request (any method but GET) made with a
//! person's or the enrolment token: the token's id (never the token), its role, the route
//! template and the concrete path, the status, and the time.
//!
//! The extractors ([`Viewer`], [`Operator`], [`Admin`], [`Enroller`], [`Agent`]) check the same
//! rule again from what the middleware found, so a handler cannot be reached with less than
//! its signature says even if it is mounted without the middleware.

use std::sync::{Arc, Mutex};

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bellwether_model::HostName;
use bellwether_store::{EventKind, TokenKind};

use crate::error::ApiError;
use crate::{now_ms, AppState};

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token (`/healthz`, `/metrics`).
    Public,
    /// The enrolment token.
    Enrol,
    /// An agent token (the host's own data and actions).
    Agent,
    /// A viewer, operator or admin token.
    Viewer,
    /// An operator or admin token.
    Operator,
    /// An admin token.
    Admin,
}

impl Access {
    /// Whether a token of `kind` may use a route that needs `self`.
    pub fn allows(self, kind: TokenKind) -> bool {
        match self {
            Access::Public => true,
            Access::Enrol => kind == TokenKind::Enrol,
            Access::Agent => kind == TokenKind::Agent,
            Access::Viewer => kind.rank() >= TokenKind::Viewer.rank(),
            Access::Operator => kind.rank() >= TokenKind::Operator.rank(),
            Access::Admin => kind.rank() >= TokenKind::Admin.rank(),
        }
    }

    /// `viewer`, `operator`, ... as written in docs/api.md.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Enrol => "enrol",
            Access::Agent => "agent",
            Access::Viewer => "viewer",
            Access::Operator => "operator",
            Access::Admin => "admin",
        }
    }

    fn needs(self) -> &'static str {
        match self {
            Access::Public => "this endpoint needs no token",
            Access::Enrol => {
                "this endpoint needs the enrolment token (see enrol.token in the server's data dir)"
            }
            Access::Agent => "this endpoint needs an agent token, issued by POST /api/v1/enrol",
            Access::Viewer => {
                "this endpoint needs a viewer token, an operator token or an admin token"
            }
            Access::Operator => {
                "this endpoint needs an operator token or an admin token (see operator.token \
                 in the server's data dir, or `bellwether token create --role operator`)"
            }
            Access::Admin => {
                "this endpoint needs an admin token (see admin.token in the server's data dir)"
            }
        }
    }
}

/// The rule of every route, as (method, path template, access). A test checks that this
/// lists exactly the routes the server serves and that each refuses every other token.
pub const RULES: &[(&str, &str, Access)] = &[
    ("GET", "/healthz", Access::Public),
    ("GET", "/metrics", Access::Public),
    ("POST", "/api/v1/enrol", Access::Enrol),
    ("POST", "/api/v1/agent/profile", Access::Agent),
    ("POST", "/api/v1/agent/samples", Access::Agent),
    ("POST", "/api/v1/agent/config", Access::Agent),
    ("POST", "/api/v1/agent/config/graph", Access::Agent),
    ("GET", "/api/v1/agent/actions", Access::Agent),
    ("POST", "/api/v1/agent/actions/{id}/result", Access::Agent),
    ("GET", "/api/v1/hosts", Access::Viewer),
    ("GET", "/api/v1/hosts/{name}", Access::Viewer),
    ("GET", "/api/v1/hosts/{name}/profile", Access::Viewer),
    ("GET", "/api/v1/hosts/{name}/baseline", Access::Viewer),
    ("GET", "/api/v1/hosts/{name}/drift", Access::Viewer),
    ("GET", "/api/v1/hosts/{name}/samples", Access::Viewer),
    ("GET", "/api/v1/fleet/drift", Access::Viewer),
    ("GET", "/api/v1/events", Access::Viewer),
    ("GET", "/api/v1/events/stream", Access::Viewer),
    ("GET", "/api/v1/whoami", Access::Viewer),
    ("GET", "/api/v1/rollouts", Access::Viewer),
    ("GET", "/api/v1/rollouts/{id}", Access::Viewer),
    ("GET", "/api/v1/rollouts/{id}/report", Access::Viewer),
    ("GET", "/api/v1/patches", Access::Viewer),
    ("GET", "/api/v1/patches/{id}", Access::Viewer),
    ("GET", "/api/v1/patches/{id}/report", Access::Viewer),
    ("GET", "/api/v1/patches/{id}/connections", Access::Viewer),
    ("GET", "/api/v1/models", Access::Viewer),
    ("GET", "/api/v1/config/sources", Access::Viewer),
    ("GET", "/api/v1/config/changes", Access::Viewer),
    ("GET", "/api/v1/config/snapshots", Access::Viewer),
    ("GET", "/api/v1/config/snapshots/{id}", Access::Viewer),
    ("GET", "/api/v1/config/graph", Access::Viewer),
    ("POST", "/api/v1/config/simulate", Access::Viewer),
    ("GET", "/api/v1/config/tasks", Access::Viewer),
    ("GET", "/api/v1/config/tasks/{id}", Access::Viewer),
    ("GET", "/api/v1/risk", Access::Viewer),
    ("GET", "/api/v1/mirror/dependencies", Access::Viewer),
    ("GET", "/api/v1/mirror/dependencies/{name}", Access::Viewer),
    (
        "GET",
        "/api/v1/mirror/dependencies/{name}/history",
        Access::Viewer,
    ),
    ("GET", "/api/v1/shadow/shadows", Access::Viewer),
    ("GET", "/api/v1/shadow/shadows/{name}", Access::Viewer),
    (
        "GET",
        "/api/v1/shadow/shadows/{name}/points",
        Access::Viewer,
    ),
    (
        "GET",
        "/api/v1/shadow/shadows/{name}/history",
        Access::Viewer,
    ),
    ("GET", "/api/v1/alerts/rules", Access::Viewer),
    ("GET", "/api/v1/alerts/rules/{id}", Access::Viewer),
    ("GET", "/api/v1/alerts/deliveries", Access::Viewer),
    ("POST", "/api/v1/baselines", Access::Operator),
    ("POST", "/api/v1/alerts/rules", Access::Operator),
    ("DELETE", "/api/v1/alerts/rules/{id}", Access::Operator),
    ("POST", "/api/v1/alerts/rules/{id}/test", Access::Operator),
    ("POST", "/api/v1/rollouts", Access::Operator),
    ("POST", "/api/v1/rollouts/{id}/{command}", Access::Operator),
    (
        "POST",
        "/api/v1/rollouts/{id}/hosts/{host}/rollback",
        Access::Operator,
    ),
    ("POST", "/api/v1/patches", Access::Operator),
    ("POST", "/api/v1/patches/{id}/abort", Access::Operator),
    ("POST", "/api/v1/config/snapshots", Access::Operator),
    (
        "POST",
        "/api/v1/config/snapshots/{id}/restore",
        Access::Operator,
    ),
    ("POST", "/api/v1/config/tasks", Access::Operator),
    ("POST", "/api/v1/config/tasks/{id}/abort", Access::Operator),
    ("POST", "/api/v1/config/tasks/{id}/revert", Access::Operator),
    ("POST", "/api/v1/mirror/dependencies", Access::Operator),
    (
        "PATCH",
        "/api/v1/mirror/dependencies/{name}",
        Access::Operator,
    ),
    (
        "DELETE",
        "/api/v1/mirror/dependencies/{name}",
        Access::Operator,
    ),
    (
        "POST",
        "/api/v1/mirror/dependencies/{name}/failover",
        Access::Operator,
    ),
    ("POST", "/api/v1/shadow/shadows", Access::Operator),
    ("DELETE", "/api/v1/shadow/shadows/{name}", Access::Operator),
    (
        "POST",
        "/api/v1/shadow/shadows/{name}/points",
        Access::Operator,
    ),
    (
        "POST",
        "/api/v1/shadow/shadows/{name}/rollback",
        Access::Operator,
    ),
    (
        "POST",
        "/api/v1/shadow/shadows/{name}/predict",
        Access::Operator,
    ),
    (
        "POST",
        "/api/v1/shadow/shadows/{name}/failure",
        Access::Operator,
    ),
    ("POST", "/api/v1/history/import", Access::Operator),
    ("POST", "/api/v1/model/train", Access::Operator),
    ("POST", "/api/v1/risk/forgive", Access::Operator),
    ("GET", "/api/v1/tokens", Access::Admin),
    ("POST", "/api/v1/tokens", Access::Admin),
    ("DELETE", "/api/v1/tokens/{id}", Access::Admin),
];

/// The rule of `method` on the route template `path`; HEAD follows GET.
pub fn rule(method: &Method, path: &str) -> Option<Access> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    RULES
        .iter()
        .find(|(m, p, _)| *m == method && *p == path)
        .map(|(_, _, a)| *a)
}

/// Who made a request: set by [`authorize`] for every route that needs a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's id in the store (never the token).
    pub token_id: i64,
    pub kind: TokenKind,
    /// The host of an agent token.
    pub host: Option<HostName>,
}

/// A request made with a viewer, operator or admin token.
#[derive(Debug)]
pub struct Viewer;

/// A request made with an operator or admin token.
#[derive(Debug)]
pub struct Operator;

/// A request made with an admin token: who, for the events it logs.
#[derive(Debug)]
pub struct Admin(pub Principal);

/// A request made with the enrolment token.
#[derive(Debug)]
pub struct Enroller;

/// A request made with an agent token: the host it belongs to.
#[derive(Debug)]
pub struct Agent(pub HostName);

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let Some(value) = parts.headers.get(AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "missing `Authorization: Bearer <token>` header",
        ));
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not ASCII"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(ApiError::unauthorized(
            "the Authorization header must be `Bearer <token>`",
        )),
    }
}

/// Who the request's token belongs to: 401 for no or an unknown token.
async fn identify(parts: &Parts, state: &AppState, access: Access) -> Result<Principal, ApiError> {
    if let Some(p) = parts.extensions.get::<Principal>() {
        return Ok(p.clone());
    }
    let token = bearer(parts)
        .map_err(|e| ApiError::unauthorized(format!("{}; {}", e.message, access.needs())))?;
    match state.store.authenticate(token).await? {
        Some(g) => Ok(Principal {
            token_id: g.id,
            kind: g.kind,
            host: g.host,
        }),
        None => Err(ApiError::unauthorized(format!(
            "unknown or revoked token; {}",
            access.needs()
        ))),
    }
}

/// 403 unless `access` allows the principal's role.
fn permit(principal: &Principal, access: Access, what: &str) -> Result<(), ApiError> {
    if access.allows(principal.kind) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "{} {} token may not {what}; {}",
            if principal.kind.as_str().starts_with(['a', 'e']) {
                "an"
            } else {
                "a"
            },
            principal.kind,
            access.needs()
        ),
    ))
}

/// [`identify`], then [`permit`].
async fn check(
    parts: &Parts,
    state: &AppState,
    access: Access,
    what: &str,
) -> Result<Principal, ApiError> {
    let principal = identify(parts, state, access).await?;
    permit(&principal, access, what)?;
    Ok(principal)
}

fn what(parts: &Parts) -> String {
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| parts.uri.path().to_string());
    format!("{} {route}", parts.method)
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        check(parts, state, Access::Viewer, &what(parts))
            .await
            .map(|_| Viewer)
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        check(parts, state, Access::Operator, &what(parts))
            .await
            .map(|_| Operator)
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        check(parts, state, Access::Admin, &what(parts))
            .await
            .map(Admin)
    }
}

impl FromRequestParts<AppState> for Enroller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        check(parts, state, Access::Enrol, &what(parts))
            .await
            .map(|_| Enroller)
    }
}

impl FromRequestParts<AppState> for Agent {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match check(parts, state, Access::Agent, &what(parts)).await?.host {
            Some(host) => Ok(Agent(host)),
            None => Err(ApiError::unauthorized(Access::Agent.needs())),
        }
    }
}

/// At most this many refused requests are logged one by one per minute; the rest are counted
/// and logged as one event, so a flood of bad tokens cannot flood the event log.
pub const REFUSALS_LOGGED_PER_MINUTE: u64 = 60;

/// The middleware's state: the handlers' state and the refusal budget.
#[derive(Clone)]
pub(crate) struct AuthState {
    pub app: AppState,
    budget: Arc<Mutex<RefusalBudget>>,
}

impl AuthState {
    pub fn new(app: AppState) -> AuthState {
        AuthState {
            app,
            budget: Arc::new(Mutex::new(RefusalBudget::default())),
        }
    }
}

#[derive(Debug, Default)]
struct RefusalBudget {
    window_start_ms: i64,
    logged: u64,
    suppressed: u64,
}

impl RefusalBudget {
    /// Whether one more refusal at `now` may be logged, and how many were left unlogged in
    /// the window that has just closed (to be logged now).
    fn take(&mut self, now: i64) -> (bool, u64) {
        let closed = self.take_closed(now);
        if self.logged < REFUSALS_LOGGED_PER_MINUTE {
            self.logged += 1;
            (true, closed)
        } else {
            self.suppressed += 1;
            (false, closed)
        }
    }

    /// Closes the window if it is over, returning how many refusals it left unlogged.
    fn take_closed(&mut self, now: i64) -> u64 {
        if now - self.window_start_ms >= 60_000 {
            self.window_start_ms = now;
            self.logged = 0;
            std::mem::take(&mut self.suppressed)
        } else {
            0
        }
    }
}

/// Checks every matched request against its route's rule and writes the audit log (see the
/// module documentation).
pub(crate) async fn authorize(State(auth): State<AuthState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| parts.uri.path().to_string());
    let method = parts.method.clone();
    let path = parts.uri.path().to_string();
    let line = Line {
        method: &method,
        route: &route,
        path: &path,
    };
    let Some(access) = rule(&method, &route) else {
        if RULES.iter().any(|(_, p, _)| *p == route) {
            // A method the route does not serve (axum runs this layer around the 405
            // fallback too); never let a method without a rule through.
            return ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{path} does not accept {method}; see docs/api.md"),
            )
            .into_response();
        }
        let err = ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{method} {route} has no access rule, so it is refused to everyone (a server bug: add it to auth::RULES)"),
        );
        tracing::error!(method = %method, route = %route, "A route has no access rule.");
        audit(&auth, &line, None, err.status, true).await;
        return err.into_response();
    };
    if access == Access::Public {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let principal = match identify(&parts, &auth.app, access).await {
        Ok(p) => p,
        Err(err) => {
            if err.status == StatusCode::UNAUTHORIZED {
                audit(&auth, &line, None, err.status, true).await;
            }
            return err.into_response();
        }
    };
    if let Err(err) = permit(&principal, access, &format!("{method} {route}")) {
        audit(&auth, &line, Some(&principal), err.status, true).await;
        return err.into_response();
    }
    parts.extensions.insert(principal.clone());
    let resp = next.run(Request::from_parts(parts, body)).await;
    let status = resp.status();
    let refused = status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
    let changes = method != Method::GET && method != Method::HEAD;
    if refused || (changes && principal.kind != TokenKind::Agent) {
        audit(&auth, &line, Some(&principal), status, refused).await;
    }
    resp
}

/// The request an audit event is about.
struct Line<'a> {
    method: &'a Method,
    route: &'a str,
    path: &'a str,
}

/// The longest concrete path an audit event keeps.
const AUDIT_PATH_LIMIT: usize = 256;

/// Writes one `audit` event. A refusal beyond the per-minute budget is only counted. A
/// failed write is logged, never turned into a different answer: the request has been
/// answered (or refused) already.
async fn audit(
    auth: &AuthState,
    line: &Line<'_>,
    who: Option<&Principal>,
    status: StatusCode,
    refused: bool,
) {
    let now = now_ms();
    let (log_this, closed) = {
        let mut b = auth
            .budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if refused {
            b.take(now)
        } else {
            (true, b.take_closed(now))
        }
    };
    let store = &auth.app.store;
    if closed > 0 {
        let figures = serde_json::json!({"suppressed": closed, "refused": true});
        let reason = format!(
            "{closed} more refused requests in the previous minute were not logged one by one"
        );
        if let Err(e) = store
            .record_event(EventKind::Audit, None, &reason, &figures, now)
            .await
        {
            tracing::error!(error = %e, "Could not write an audit event.");
        }
    }
    if !log_this {
        return;
    }
    let mut path = line.path.to_string();
    if path.len() > AUDIT_PATH_LIMIT {
        let mut cut = AUDIT_PATH_LIMIT;
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        path.truncate(cut);
        path.push('…');
    }
    let method = line.method.as_str();
    let route = line.route;
    let code = status.as_u16();
    let by = match who {
        Some(p) => format!("{} token {}", p.kind, p.token_id),
        None => "no valid token".to_string(),
    };
    let outcome = if refused { "refused" } else { "answered" };
    let reason = format!("{method} {route} by {by}: {outcome} {code}");
    let figures = serde_json::json!({
        "token_id": who.map(|p| p.token_id),
        "role": who.map(|p| p.kind.as_str()),
        "method": method,
        "route": route,
        "path": path,
        "status": code,
        "refused": refused,
    });
    let host = who.and_then(|p| p.host.as_ref());
    if let Err(e) = store
        .record_event(EventKind::Audit, host, &reason, &figures, now)
        .await
    {
        tracing::error!(error = %e, method, route, status = code, "Could not write an audit event.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_rank_and_other_kinds_stay_apart() {
        use TokenKind::*;
        let table = [
            (Access::Viewer, [true, true, true, false, false]),
            (Access::Operator, [false, true, true, false, false]),
            (Access::Admin, [false, false, true, false, false]),
            (Access::Enrol, [false, false, false, true, false]),
            (Access::Agent, [false, false, false, false, true]),
        ];
        for (access, want) in table {
            let got = [Viewer, Operator, Admin, Enrol, Agent].map(|k| access.allows(k));
            assert_eq!(got, want, "{access:?}");
        }
    }

    /// A route served without a rule in [`RULES`] is refused to everyone, even with the
    /// admin token, and the refusal is audited.
    #[tokio::test]
    async fn a_route_without_a_rule_is_closed_to_everyone() {
        use tower::ServiceExt;
        let (store, dir) = bellwether_store::testing::fresh_sqlite();
        let mut config = crate::ServerConfig::new(store, None);
        config.admin_token = Some("admin-token-for-unit-test-01".into());
        config.operator_token = Some("operator-token-for-unit-test".into());
        config.enrol_token = Some("enrol-token-for-unit-test-01".into());
        let server = crate::Server::open(config).await.unwrap();
        let app = axum::Router::new()
            .route(
                "/api/v1/new-thing",
                axum::routing::post(|| async { "done" }),
            )
            .route_layer(axum::middleware::from_fn_with_state(
                AuthState::new(server.state.clone()),
                authorize,
            ))
            .with_state(server.state.clone());
        let req = axum::http::Request::post("/api/v1/new-thing")
            .header(AUTHORIZATION, "Bearer admin-token-for-unit-test-01")
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let audit = server
            .store()
            .events_where(None, Some("audit"), 10)
            .await
            .unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0].figures["route"], "/api/v1/new-thing");
        server.store().close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn refusals_beyond_the_budget_are_counted_and_reported_once() {
        let mut b = RefusalBudget::default();
        let t0 = 1_000_000;
        for _ in 0..REFUSALS_LOGGED_PER_MINUTE {
            assert_eq!(b.take(t0), (true, 0));
        }
        assert_eq!(b.take(t0 + 1), (false, 0));
        assert_eq!(b.take(t0 + 2), (false, 0));
        assert_eq!(b.take_closed(t0 + 59_999), 0);
        assert_eq!(b.take_closed(t0 + 60_000), 2);
        assert_eq!(b.take(t0 + 60_001), (true, 0));
    }
}
