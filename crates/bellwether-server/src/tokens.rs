//! Making sure the server's own tokens exist — admin, operator and enrolment: given by the
//! operator (flag or environment), kept from an earlier start, or generated and written to
//! `<data-dir>/<kind>.token` (mode 0600) — and the admin API that makes, lists and revokes
//! more (`/api/v1/tokens`). Only hashes go into the store.

use std::path::{Path, PathBuf};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::Json;
use bellwether_store::{Store, TokenInfo, TokenKind};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::auth::Admin;
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::{now_ms, AppState, ServerConfig, ServerError};

/// Where a fleet-wide token came from on this start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// Given on the command line or in the environment.
    Given,
    /// Generated on this start.
    Generated,
    /// Kept from an earlier start.
    Kept,
    /// The store had none, but the token file did: its token was taken into the store rather
    /// than the file being overwritten (a new or replaced store beside existing token files).
    Adopted,
    /// Neither given nor generated: there is no data dir to write it to. Only the admin token
    /// may be absent; tokens are then made by nobody until one is given.
    Absent,
}

/// What the operator should be told about one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenNotice {
    /// `admin`, `operator` or `enrol`.
    pub kind: &'static str,
    pub source: TokenSource,
    /// The file that holds the plain token, when there is one.
    pub file: Option<PathBuf>,
}

impl std::fmt::Display for TokenNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match self.source {
            TokenSource::Given => "as given",
            TokenSource::Generated => "generated",
            TokenSource::Kept => "kept from an earlier start",
            TokenSource::Adopted => "taken from its existing file into a store that had none",
            TokenSource::Absent => {
                return write!(
                    f,
                    "no {} token: there is no data dir to write one to; pass --{}-token to set one",
                    self.kind, self.kind
                )
            }
        };
        match &self.file {
            Some(p) => write!(f, "{} token ({how}) is in {}", self.kind, p.display()),
            None => write!(
                f,
                "{} token ({how}) has no file; pass --{}-token to set a new one",
                self.kind, self.kind
            ),
        }
    }
}

/// A fresh random token: 32 bytes from the OS, in hex.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Writes `token` to `path` atomically, readable by the owner only from the file's creation
/// (see `bellwether_fs`).
fn write_token_file(path: &Path, token: &str) -> Result<(), ServerError> {
    bellwether_fs::AtomicWrite::new()
        .mode(0o600)
        .create_parent()
        .write(path, format!("{token}\n").as_bytes())
        .map_err(|source| ServerError::TokenFile {
            path: path.to_path_buf(),
            source,
        })
}

pub(crate) async fn bootstrap(
    store: &Store,
    config: &ServerConfig,
) -> Result<Vec<TokenNotice>, ServerError> {
    let mut notices = Vec::new();
    // A store with no host and no event is new on this start. Only a new store takes a token
    // from an existing file; a used store without a token of a kind had it revoked, and a
    // revoked token must never come back from its old file.
    let fresh_store = store.count_hosts().await? == 0 && store.events(None, 1).await?.is_empty();
    for (kind, given) in [
        (TokenKind::Admin, config.admin_token.as_deref()),
        (TokenKind::Operator, config.operator_token.as_deref()),
        (TokenKind::Enrol, config.enrol_token.as_deref()),
    ] {
        let name = kind.as_str();
        let file = config
            .data_dir
            .as_ref()
            .map(|d| d.join(format!("{name}.token")));
        let notice = match given {
            Some(token) => {
                let current = store.authenticate(token).await?;
                if let Some(other) = current.as_ref().map(|g| g.kind).filter(|k| *k != kind) {
                    return Err(ServerError::TokenOfOtherKind {
                        kind: name,
                        other: other.as_str(),
                    });
                }
                if current.map(|g| g.kind) != Some(kind) {
                    store
                        .set_fleet_token(
                            kind,
                            token,
                            &format!("{name} token given at start"),
                            now_ms(),
                        )
                        .await?;
                }
                if let Some(path) = &file {
                    let on_disk = std::fs::read_to_string(path).ok();
                    if on_disk.as_deref().map(str::trim) != Some(token) {
                        write_token_file(path, token)?;
                    }
                }
                TokenNotice {
                    kind: name,
                    source: TokenSource::Given,
                    file,
                }
            }
            None if !store.has_token(kind).await? => {
                let Some(path) = file else {
                    if kind == TokenKind::Admin {
                        // A server run without a data dir (tests, embedding) has no admin
                        // unless one is given; the operator and enrolment tokens are required.
                        notices.push(TokenNotice {
                            kind: name,
                            source: TokenSource::Absent,
                            file: None,
                        });
                        continue;
                    }
                    return Err(ServerError::NoTokenDestination { kind: name });
                };
                // A store that is new beside an existing token file (the store moved, lost or
                // replaced, or a first start on PostgreSQL) takes the file's token instead of
                // overwriting it, so the agents and people who hold it keep working. In a
                // store that was used, the token was revoked: a new one replaces the file.
                let existing = match std::fs::read_to_string(&path) {
                    Ok(text) if fresh_store => Some(text.trim().to_string()),
                    Ok(_) => None,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(source) => return Err(ServerError::TokenFile { path, source }),
                };
                let (token, source, why) = match existing {
                    Some(token) => (token, TokenSource::Adopted, "taken from its file"),
                    None => {
                        let token = generate_token();
                        write_token_file(&path, &token)?;
                        (token, TokenSource::Generated, "generated at first start")
                    }
                };
                if let Some(other) = store.authenticate(&token).await?.map(|g| g.kind) {
                    return Err(ServerError::TokenOfOtherKind {
                        kind: name,
                        other: other.as_str(),
                    });
                }
                store
                    .set_fleet_token(kind, &token, &format!("{name} token {why}"), now_ms())
                    .await?;
                tracing::info!(kind = name, file = %path.display(), how = why, "Set up a token.");
                TokenNotice {
                    kind: name,
                    source,
                    file: Some(path),
                }
            }
            None => {
                let file = file.filter(|p| p.exists());
                TokenNotice {
                    kind: name,
                    source: TokenSource::Kept,
                    file,
                }
            }
        };
        notices.push(notice);
    }
    Ok(notices)
}

// ---- the admin API ----------------------------------------------------------------------

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// Who or what the token is for, such as `grafana` or `alice`.
    pub name: String,
}

/// A token just made: its record and, this once, the token itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: TokenInfo,
    pub token: String,
}

pub(crate) async fn create(
    State(state): State<AppState>,
    Admin(who): Admin,
    JsonBody(req): JsonBody<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let kind = TokenKind::parse(&req.role)
        .filter(|k| k.rank().is_some())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "role {:?} is not one of viewer, operator, admin (agent tokens come from enrolment, the enrolment token from the server's start)",
                req.role
            ))
        })?;
    let token = generate_token();
    let info = state
        .store
        .create_token(kind, &token, &req.name, Some(who.token_id), now_ms())
        .await?;
    tracing::info!(id = info.id, role = %kind, by = who.token_id, "Made a token.");
    Ok((StatusCode::CREATED, Json(CreatedToken { info, token })))
}

pub(crate) async fn list(
    State(state): State<AppState>,
    _auth: Admin,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    Ok(Json(state.store.tokens().await?))
}

pub(crate) async fn revoke(
    State(state): State<AppState>,
    Admin(who): Admin,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    let id: i64 = id.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "bad token id {id:?} in path: a token id is a number (see GET /api/v1/tokens)"
        ))
    })?;
    match state
        .store
        .revoke_token(id, Some(who.token_id), now_ms())
        .await?
    {
        Some(info) => {
            tracing::info!(id, role = %info.kind, by = who.token_id, "Revoked a token.");
            Ok(Json(info))
        }
        None => Err(ApiError::not_found(format!("no token with id {id}"))),
    }
}
