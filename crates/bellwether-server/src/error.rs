//! API errors: a status and a message that names the field or host, sent as
//! `{"error": "..."}`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bellwether_store::{FailureKind, StoreError};

/// An error answer of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }

    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {limit} bytes"),
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

/// What every 503 asks the client to wait before retrying, in seconds (`Retry-After`).
pub const RETRY_AFTER_SECS: u64 = 10;

/// A store failure is never a 2xx: a full disk or a store that is busy or unreachable for now
/// is a 503 (with `Retry-After`), anything else a 500. Unknown hosts and bad input keep their
/// 404 and 400.
impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        match err {
            StoreError::UnknownHost(h) => ApiError::not_found(format!("unknown host {h}")),
            StoreError::BadInput { .. } => ApiError::bad_request(err.to_string()),
            other => match other.failure_kind() {
                FailureKind::DiskFull => {
                    tracing::error!(error = %other, "The store's disk is full; refusing writes until space is freed.");
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "the store's disk is full, so this request was not stored; free space on the disk that holds the store, then retry ({other})"
                        ),
                    )
                }
                FailureKind::Unavailable => {
                    tracing::warn!(error = %other, "The store is unavailable for now.");
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "the store is unavailable for now, so this request was not stored; retry later ({other})"
                        ),
                    )
                }
                FailureKind::Other => {
                    tracing::error!(error = %other, "Store operation failed.");
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string())
                }
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.message }));
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            (
                self.status,
                [(header::RETRY_AFTER, RETRY_AFTER_SECS.to_string())],
                body,
            )
                .into_response()
        } else {
            (self.status, body).into_response()
        }
    }
}
