//! The dashboard: `/ui` serves `ui/index.html` and `/ui/PATH` the other files of `ui/`, all
//! embedded in the binary at build time (no network, no build step: plain ES modules). The page
//! needs no token; it asks for one and sends it with every API call (see docs/dashboard.md).

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::AppState;

#[derive(rust_embed::Embed)]
#[folder = "ui/"]
struct Assets;

/// The page's routes, outside the token rules of `auth::RULES`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/{*path}", get(asset))
}

/// What the page may load and connect to: only this origin.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
                   object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

async fn index() -> Response {
    serve("index.html")
}

async fn asset(Path(path): Path<String>) -> Response {
    serve(&path)
}

/// The content type of a dashboard file, by its extension.
pub(crate) fn content_type(path: &str) -> Option<&'static str> {
    let ext = path.rsplit_once('.').map(|(_, e)| e)?;
    Some(match ext {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "json" => "application/json",
        _ => return None,
    })
}

fn serve(path: &str) -> Response {
    let (Some(file), Some(kind)) = (Assets::get(path), content_type(path)) else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("no dashboard file {path:?}; the dashboard is at /ui"),
        )
            .into_response();
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            // The files change with the binary: revalidate each time (the ETag is their hash).
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        file.data.into_owned(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_file_has_a_content_type() {
        let names: Vec<String> = Assets::iter().map(|n| n.to_string()).collect();
        assert!(names.iter().any(|n| n == "index.html"), "{names:?}");
        assert!(names.iter().any(|n| n == "app.js"), "{names:?}");
        for name in names {
            assert!(content_type(&name).is_some(), "{name} has no content type");
        }
    }

    #[test]
    fn unknown_and_traversing_paths_are_not_found() {
        for p in ["nope.js", "../Cargo.toml", "/etc/passwd", "lib", "index"] {
            assert_eq!(serve(p).status(), StatusCode::NOT_FOUND, "{p}");
        }
        assert_eq!(serve("index.html").status(), StatusCode::OK);
    }
}
