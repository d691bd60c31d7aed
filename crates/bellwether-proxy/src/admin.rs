//! The admin HTTP API: backends (with health, admin state and metrics), connections, changes
//! of weight and admin state, drains, and the Prometheus `/metrics` page.
//!
//! It is guarded as an operator would expect of HAProxy's or Envoy's admin interface, and
//! more: every route but `/metrics` and `/healthz` needs the bearer token
//! (`Authorization: Bearer <token>`, 401 otherwise); every request's `Host` must be an IP
//! literal, `localhost` or an allowed name (421 otherwise, 400 when missing), which defeats DNS
//! rebinding; a request with a body must say `Content-Type: application/json` (415), so a web
//! page cannot send one without a CORS preflight; and bad values are refused with 400 before
//! anything changes. With a certificate and key it speaks HTTPS (rustls, the ring provider).

use std::io::Write as _;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::{AdminSecurity, AdminState, HostPort, RawBackend, RedisMode, Role};
use crate::metrics::{render_prometheus, PromBackend};
use crate::Shared;

/// The longest drain an admin request may ask for.
pub const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(3600);
/// The drain timeout when the request names none.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may take for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Admin connections served at once; more wait in the listen backlog.
const MAX_ADMIN_CONNECTIONS: usize = 256;

/// Why the admin API could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin token file {path}: {message}")]
    TokenFile { path: String, message: String },
    #[error("admin TLS: {0}")]
    Tls(String),
}

/// The admin API's token, and the file it is in.
#[derive(Debug)]
pub struct AdminToken {
    token: String,
    hash: [u8; 32],
    file: PathBuf,
    /// A token generated into a temporary file: the file goes when the proxy stops.
    _temp: Option<tempfile::TempPath>,
}

impl AdminToken {
    /// The token, as clients send it after `Bearer `.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The file that holds it.
    pub fn file(&self) -> &FsPath {
        &self.file
    }

    /// Reads the token from the configured file, generates it into that file (created
    /// exclusively, mode 0600) when it does not exist, or, with no file configured, into a
    /// fresh private temporary file removed when the proxy stops.
    pub fn prepare(security: &AdminSecurity) -> Result<AdminToken, AdminError> {
        let (token, file, temp) = match &security.token_file {
            Some(path) => match std::fs::symlink_metadata(path) {
                Ok(_) => (read_token_file(path)?, path.clone(), None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let token = generate_token();
                    write_new_token_file(path, &token)?;
                    tracing::info!(file = %path.display(), "Admin token generated.");
                    (token, path.clone(), None)
                }
                Err(e) => {
                    return Err(AdminError::TokenFile {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    })
                }
            },
            None => {
                let token = generate_token();
                let err = |e: std::io::Error| AdminError::TokenFile {
                    path: std::env::temp_dir().display().to_string(),
                    message: e.to_string(),
                };
                // Created with O_EXCL and mode 0600 under a random name.
                let mut f = tempfile::Builder::new()
                    .prefix("bellwether-proxy-admin-")
                    .suffix(".token")
                    .tempfile()
                    .map_err(err)?;
                f.write_all(format!("{token}\n").as_bytes()).map_err(err)?;
                let temp = f.into_temp_path();
                let file = temp.to_path_buf();
                tracing::info!(file = %file.display(), "Admin token generated for this run.");
                (token, file, Some(temp))
            }
        };
        Ok(AdminToken {
            hash: Sha256::digest(token.as_bytes()).into(),
            token,
            file,
            _temp: temp,
        })
    }

    /// Compares hashes, so the time taken says nothing about the token.
    fn matches(&self, given: &str) -> bool {
        let h: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        h == self.hash
    }
}

/// A fresh random token: 32 bytes from the OS, in hex (as the server's tokens).
fn generate_token() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_new_token_file(path: &FsPath, token: &str) -> Result<(), AdminError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let err = |e: std::io::Error| AdminError::TokenFile {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(err)
}

/// Reads an operator's token file: owner-only permissions (no access for others, no write
/// for the group), one line of at least 16 printable characters.
fn read_token_file(path: &FsPath) -> Result<String, AdminError> {
    use std::os::unix::fs::PermissionsExt as _;
    let fail = |message: String| AdminError::TokenFile {
        path: path.display().to_string(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o027 != 0 {
        return Err(fail(format!(
            "mode {mode:04o} lets others read or change it; chmod 600 it"
        )));
    }
    if meta.len() > 4096 {
        return Err(fail(
            "is larger than 4 KiB; it should hold one token".into(),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let token = text.trim_end_matches(['\n', '\r']);
    if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(fail(
            "must hold one token of at least 16 printable characters, without spaces".into(),
        ));
    }
    Ok(token.to_string())
}

/// Builds the TLS acceptor from a PEM certificate chain and private key, as the server's own
/// TLS does (`bellwether_tls`: the ring provider, TLS 1.2 and 1.3, HTTP/1.1 by ALPN).
pub fn tls_acceptor(cert: &FsPath, key: &FsPath) -> Result<TlsAcceptor, AdminError> {
    bellwether_tls::server_config_for(cert, key, ("--admin-tls-cert", "--admin-tls-key"))
        .map(TlsAcceptor::from)
        .map_err(|e| AdminError::Tls(e.to_string()))
}

/// What the request guards need.
#[derive(Debug)]
pub struct Guard {
    pub token: AdminToken,
    /// Lower-case host names accepted besides IP literals and `localhost`.
    pub allow_hosts: Vec<String>,
}

/// The admin API's routes over a proxy's shared state, guarded.
pub fn router(shared: Arc<Shared>, guard: Arc<Guard>) -> Router {
    let private = Router::new()
        .route("/backends", get(backends))
        .route(
            "/backends/{name}",
            get(backend).post(change).put(add).delete(remove),
        )
        .route("/primary", get(primary).post(set_primary))
        .route("/mode", post(set_mode))
        .route("/backends/{name}/drain", post(drain))
        .route("/connections", get(connections))
        .route_layer(middleware::from_fn_with_state(guard.clone(), authorize));
    Router::new()
        // Read-only and secret-free, as Prometheus exporters and HAProxy's stats page are:
        // scrapers and liveness probes need no token.
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(private)
        .with_state(shared)
        .layer(middleware::from_fn_with_state(guard, check_host))
}

/// The `Host` header's name, without its port; `None` when it is malformed.
fn host_name(value: &str) -> Option<&str> {
    if let Some(rest) = value.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        return (after.is_empty() || after.strip_prefix(':').is_some_and(is_port)).then_some(ip);
    }
    match value.rsplit_once(':') {
        Some((h, p)) if is_port(p) => Some(h),
        Some(_) => None,
        None => Some(value),
    }
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// Whether a `Host` names this API in a way no DNS rebinding can fake: an IP literal,
/// `localhost`, or a name the operator allowed.
fn host_allowed(value: &str, allow: &[String]) -> bool {
    let Some(name) = host_name(value) else {
        return false;
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allow.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// Cuts what an error quotes back to a few dozen characters.
fn quote(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out.escape_debug().to_string()
}

async fn check_host(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{fffd}").to_string())
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    match host {
        None => error(StatusCode::BAD_REQUEST, "missing Host header".into()),
        Some(h) if !host_allowed(&h, &g.allow_hosts) => error(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "Host `{}` is not this admin API: use an IP address or localhost, or allow the \
                 name with --admin-allow-host",
                quote(&h)
            ),
        ),
        Some(_) => next.run(req).await,
    }
}

async fn authorize(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let refused = match given {
        None => Some("missing `Authorization: Bearer <token>` header (the token is in the file the proxy logged at start, or --admin-token-file)"),
        Some(t) if !g.token.matches(t) => Some("wrong admin token"),
        Some(_) => None,
    };
    if let Some(message) = refused {
        let mut r = error(StatusCode::UNAUTHORIZED, message.into());
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"bellwether-proxy\""),
        );
        return r;
    }
    if let Some(r) = check_content_type(req.method(), req.headers()) {
        return r;
    }
    next.run(req).await
}

/// A request with a body, or a POST that names a content type, must send JSON: browsers send
/// `text/plain` and forms cross-origin without asking, JSON only after a CORS preflight that
/// this API never grants.
fn check_content_type(method: &Method, headers: &HeaderMap) -> Option<Response> {
    let has_body = headers
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || headers.contains_key(header::TRANSFER_ENCODING);
    let ct = headers.get(header::CONTENT_TYPE);
    if !(has_body || *method == Method::POST && ct.is_some()) {
        return None;
    }
    let json = ct
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    (!json).then(|| {
        error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type must be application/json, not `{}`",
                ct.map(|v| quote(&String::from_utf8_lossy(v.as_bytes())))
                    .unwrap_or_else(|| "(none)".into())
            ),
        )
    })
}

/// Serves the admin API on `listener`, over TLS when an acceptor is given, until `stop`.
pub(crate) async fn serve(
    app: Router,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) {
    let mut conns = JoinSet::new();
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.cancelled() => break,
        };
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "Admin accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let (app, tls, stop) = (app.clone(), tls.clone(), stop.clone());
        conns.spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_conn(sock, app, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                        Ok(Ok(s)) => serve_conn(s, app, stop).await,
                        Ok(Err(e)) => {
                            tracing::info!(client = %peer, error = %e, "Admin TLS handshake failed.")
                        }
                        Err(_) => {
                            tracing::info!(client = %peer, "Admin TLS handshake timed out.")
                        }
                    }
                }
            }
        });
        while conns.try_join_next().is_some() {}
    }
    while conns.join_next().await.is_some() {}
}

async fn serve_conn<I>(io: I, app: Router, stop: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    let r = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "Admin connection ended with an error.");
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Parses a drain timeout strictly: a finite, non-negative duration (`30`, `2.5s`, `500ms`,
/// `1m`) of at most [`MAX_DRAIN_TIMEOUT`].
pub fn parse_drain_timeout(text: &str) -> Result<Duration, String> {
    bellwether_model::duration::parse(text)
        .ok()
        .filter(|d| *d <= MAX_DRAIN_TIMEOUT)
        .ok_or_else(|| {
            format!(
                "timeout: `{}` is not a duration from 0 to {} seconds (such as `30`, `2.5s` or `500ms`)",
                quote(text),
                MAX_DRAIN_TIMEOUT.as_secs()
            )
        })
}

async fn backends(State(s): State<Arc<Shared>>) -> Response {
    Json(s.pool.view()).into_response()
}

async fn backend(State(s): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    match s.pool.view().into_iter().find(|b| b.name == name) {
        Some(b) => Json(b).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no backend named `{name}`")),
    }
}

/// The body of `POST /backends/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub weight: Option<u32>,
    pub admin: Option<String>,
    /// `primary` (the previous primary becomes a replica, unfenced) or `replica`.
    pub role: Option<String>,
}

async fn change(
    State(s): State<Arc<Shared>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let change: Change = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let admin = match change
        .admin
        .as_deref()
        .map(str::parse::<AdminState>)
        .transpose()
    {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("admin: {e}")),
    };
    let role = match change.role.as_deref().map(str::parse::<Role>).transpose() {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("role: {e}")),
    };
    if s.pool.get(&name).is_none() {
        return error(StatusCode::NOT_FOUND, format!("no backend named `{name}`"));
    }
    if let Some(r) = role {
        if let Err(e) = s.pool.set_role(&name, r) {
            return error(StatusCode::NOT_FOUND, e.to_string());
        }
    }
    match crate::set_backend(&s, &name, change.weight, admin) {
        Ok(()) => backend(State(s), Path(name)).await,
        Err(e) => error(StatusCode::NOT_FOUND, e.to_string()),
    }
}

/// The body of `PUT /backends/{name}`: a backend added at run time (a new mirror).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBackend {
    pub address: String,
    pub weight: Option<u32>,
    pub admin: Option<String>,
    pub role: Option<String>,
    pub password: Option<String>,
}

async fn add(
    State(s): State<Arc<Shared>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let nb: NewBackend = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    if name.is_empty()
        || name.len() > 128
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "name: `{}` must be letters, digits, `-`, `_` or `.`",
                quote(&name)
            ),
        );
    }
    let address = match HostPort::parse(&nb.address) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("address: {}", quote(&e))),
    };
    let mut raw = RawBackend::new(&name, address);
    if let Some(w) = nb.weight {
        raw.weight = w;
    }
    match nb
        .admin
        .as_deref()
        .map(str::parse::<AdminState>)
        .transpose()
    {
        Ok(a) => raw.admin = a.unwrap_or_default(),
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("admin: {e}")),
    }
    match nb.role.as_deref().map(str::parse::<Role>).transpose() {
        Ok(r) => raw.role = r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("role: {e}")),
    }
    raw.password = nb.password;
    match s.pool.add(&raw) {
        Ok(_) => (StatusCode::CREATED, backend(State(s), Path(name)).await).into_response(),
        Err(e) => error(StatusCode::CONFLICT, e.to_string()),
    }
}

async fn remove(State(s): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    match s.pool.remove(&name) {
        Ok(()) => Json(serde_json::json!({
            "removed": name,
            "sessions_left": s.registry.on_backend(&name).len(),
        }))
        .into_response(),
        Err(e) => error(StatusCode::NOT_FOUND, e.to_string()),
    }
}

/// The body of `POST /primary`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrimaryRequest {
    /// The new primary; null for none (Redis commands wait for one).
    pub backend: Option<String>,
    /// Set the previous primary's admin state to `maintenance`.
    #[serde(default)]
    pub fence: bool,
    /// How long to wait for the sessions busy on the previous primary (a reply outstanding,
    /// a transaction, MULTI, a blocking command) to finish; those still busy then are closed.
    /// A duration; default the configured `switch_grace`; `0` returns at once.
    pub wait: Option<String>,
}

async fn primary(State(s): State<Arc<Shared>>) -> Response {
    Json(serde_json::json!({
        "primary": s.pool.primary().map(|b| b.name.clone()),
        "roles": s.pool.has_roles(),
    }))
    .into_response()
}

async fn set_primary(State(s): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let req: PrimaryRequest = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let wait = match req.wait.as_deref().map(parse_drain_timeout).transpose() {
        Ok(t) => t.unwrap_or(s.config.switch_grace),
        Err(e) => return error(StatusCode::BAD_REQUEST, e.replacen("timeout:", "wait:", 1)),
    };
    let change = match s.pool.set_primary(req.backend.as_deref(), req.fence) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::NOT_FOUND, e.to_string()),
    };
    let settled = match &change.previous {
        Some(p) if change.primary.as_deref() != Some(p.as_str()) => {
            Some(crate::wait_idle(&s, p, wait).await)
        }
        _ => None,
    };
    Json(serde_json::json!({
        "primary": change.primary,
        "previous": change.previous,
        "fenced": change.fenced,
        "previous_sessions": settled,
    }))
    .into_response()
}

/// The body of `POST /mode`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModeRequest {
    /// `active-passive` or `active-active`, for every Redis listener; null returns each
    /// listener to its configured mode.
    pub mode: Option<String>,
}

async fn set_mode(State(s): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let req: ModeRequest = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let mode = match req.mode.as_deref().map(str::parse::<RedisMode>).transpose() {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("mode: {e}")),
    };
    s.set_mode_override(mode);
    Json(serde_json::json!({ "mode": mode })).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainQuery {
    /// How long to wait before closing the sessions that are left; parsed strictly.
    timeout: Option<String>,
}

async fn drain(
    State(s): State<Arc<Shared>>,
    Path(name): Path<String>,
    query: Result<Query<DrainQuery>, QueryRejection>,
) -> Response {
    // Every value is checked before anything changes: a refused request leaves the backend
    // as it was.
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("query: {}", e.body_text())),
    };
    let limit = match q.timeout.as_deref().map(parse_drain_timeout).transpose() {
        Ok(t) => t.unwrap_or(DEFAULT_DRAIN_TIMEOUT),
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) = crate::set_backend(&s, &name, None, Some(AdminState::Drain)) {
        return error(StatusCode::NOT_FOUND, e.to_string());
    }
    Json(crate::wait_drained(&s, &name, limit).await).into_response()
}

async fn connections(State(s): State<Arc<Shared>>) -> Response {
    Json(s.registry.view()).into_response()
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let list = s.pool.backends();
    let now = tokio::time::Instant::now();
    let states: Vec<(bool, bool, String, u32, String)> = list
        .iter()
        .map(|b| {
            let h = b.health();
            (
                h.up,
                h.ejected_until.is_some_and(|t| t > now),
                b.admin().to_string(),
                b.weight(),
                b.role()
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "none".into()),
            )
        })
        .collect();
    let prom: Vec<PromBackend<'_>> = list
        .iter()
        .zip(&states)
        .map(|(b, (up, ejected, admin, weight, role))| PromBackend {
            name: &b.name,
            weight: *weight,
            healthy: *up,
            ejected: *ejected,
            admin,
            role,
            metrics: &b.metrics,
        })
        .collect();
    let text = render_prometheus(
        &prom,
        s.pool.rejected.load(std::sync::atomic::Ordering::Relaxed),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_timeouts_are_strict() {
        assert_eq!(parse_drain_timeout("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_drain_timeout("2.5s"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_drain_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_drain_timeout("0"), Ok(Duration::ZERO));
        assert_eq!(parse_drain_timeout("1h"), Ok(MAX_DRAIN_TIMEOUT));
        for bad in [
            "NaN", "-1", "1e400", "inf", "-inf", "3600.001", "", "x", "1d",
        ] {
            let e = parse_drain_timeout(bad).unwrap_err();
            assert!(e.starts_with("timeout: `"), "{bad}: {e}");
        }
        let long = "9".repeat(10_000);
        assert!(parse_drain_timeout(&long).unwrap_err().len() < 300);
    }

    #[test]
    fn hosts() {
        let allow = vec!["proxy.internal".to_string()];
        for ok in [
            "127.0.0.1",
            "127.0.0.1:9901",
            "[::1]:9901",
            "[::1]",
            "localhost",
            "LocalHost:1",
            "localhost.",
            "10.0.0.7:80",
            "proxy.internal:9901",
            "PROXY.internal",
        ] {
            assert!(host_allowed(ok, &allow), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:9901",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "[::1",
            "[::1]x",
            "127.0.0.1:x",
            "proxy.internal.evil",
        ] {
            assert!(!host_allowed(bad, &allow), "{bad}");
        }
    }
}
