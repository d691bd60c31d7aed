//! Bearer-token extractors, one per token kind. They run before the body is read, so a
//! request with a missing or wrong token is refused (401) without reading or storing anything.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use bellwether_model::HostName;
use bellwether_store::TokenKind;

use crate::error::ApiError;
use crate::AppState;

/// A request made with the operator token.
#[derive(Debug)]
pub struct Operator;

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

fn needs(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::Operator => {
            "this endpoint needs the operator token (see operator.token in the server's data dir)"
        }
        TokenKind::Enrol => {
            "this endpoint needs the enrolment token (see enrol.token in the server's data dir)"
        }
        TokenKind::Agent => "this endpoint needs an agent token, issued by POST /api/v1/enrol",
    }
}

async fn grant(
    parts: &Parts,
    state: &AppState,
    want: TokenKind,
) -> Result<Option<HostName>, ApiError> {
    let token = bearer(parts)?;
    match state.store.authenticate(token).await? {
        Some(g) if g.kind == want => Ok(g.host),
        Some(g) => Err(ApiError::unauthorized(format!(
            "an {} token is not accepted here; {}",
            g.kind.as_str(),
            needs(want)
        ))),
        None => Err(ApiError::unauthorized(format!(
            "unknown or revoked token; {}",
            needs(want)
        ))),
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        grant(parts, state, TokenKind::Operator)
            .await
            .map(|_| Operator)
    }
}

impl FromRequestParts<AppState> for Enroller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        grant(parts, state, TokenKind::Enrol)
            .await
            .map(|_| Enroller)
    }
}

impl FromRequestParts<AppState> for Agent {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match grant(parts, state, TokenKind::Agent).await? {
            Some(host) => Ok(Agent(host)),
            None => Err(ApiError::unauthorized(needs(TokenKind::Agent))),
        }
    }
}
