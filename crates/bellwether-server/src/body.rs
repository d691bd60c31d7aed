//! Request bodies: a size limit enforced before the body is read, and JSON parsing whose
//! errors name the field (`samples[3].value: invalid type: …`).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_LENGTH;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The body limit, shared by the middleware and the extractor.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Refuses a request whose declared `Content-Length` exceeds the limit, before a byte of the
/// body is read. A body without a length (chunked) is cut off by [`JsonBody`] as soon as it
/// passes the limit.
pub async fn reject_oversized(
    axum::extract::State(limit): axum::extract::State<BodyLimit>,
    req: Request,
    next: Next,
) -> Response {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared {
        if len > limit.0 as u64 {
            return ApiError::too_large(limit.0).into_response();
        }
    }
    next.run(req).await
}

/// A JSON body parsed into `T`, with errors that name the offending field.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body is too large: {}", rej.body_text()),
                )
            } else {
                ApiError::bad_request(format!("cannot read the request body: {}", rej.body_text()))
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses JSON, naming the path of the field that failed (`.` is the whole body).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "request body is empty; a JSON document is required",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        // Both can quote the body (a bad value, an unknown key): a few hundred bytes at most.
        let path = bellwether_model::text::quote_message(&e.path().to_string(), 300);
        let inner = bellwether_model::text::quote_message(&e.into_inner().to_string(), 400);
        if path == "." {
            ApiError::bad_request(format!("invalid JSON body: {inner}"))
        } else {
            ApiError::bad_request(format!("invalid JSON body at `{path}`: {inner}"))
        }
    })?;
    de.end().map_err(|e| {
        let e = bellwether_model::text::quote_message(&e.to_string(), 400);
        ApiError::bad_request(format!("invalid JSON body: {e}"))
    })?;
    Ok(value)
}
