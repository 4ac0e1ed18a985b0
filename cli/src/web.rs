//! The web client as `parley dev` serves it: the built files of
//! `clients/web/dist`, `/config.json` telling the page where the gateway's
//! WebSocket is, and `/dev/token?uid=…` signing a dev token for any user
//! (development only: the dev secret never leaves this process, but anyone
//! who can reach the port can be anyone).

use std::{
    path::{Component, Path, PathBuf},
    sync::Arc,
};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::get,
};
use parley_server::Uid;
use tokio::net::TcpListener;

/// Dev tokens live this long, in seconds.
const TOKEN_TTL: u64 = 12 * 3600;

/// What the web server serves.
#[derive(Clone)]
pub struct Site {
    dir: PathBuf,
    ws: String,
    secret: &'static str,
}

impl Site {
    /// The files under `dir`, a page config naming `ws`, tokens signed with `secret`.
    pub fn new(dir: PathBuf, ws: String, secret: &'static str) -> Self {
        Self { dir, ws, secret }
    }
}

/// Serves `site` on `listener` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    site: Site,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/config.json", get(config))
        .route("/dev/token", get(token))
        .fallback(get(file))
        .with_state(Arc::new(site));
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
}

async fn config(State(site): State<Arc<Site>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "ws": site.ws }))
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    uid: String,
}

async fn token(State(site): State<Arc<Site>>, Query(query): Query<TokenQuery>) -> Response {
    let Ok(uid) = Uid::parse(&query.uid) else {
        return (
            StatusCode::BAD_REQUEST,
            "a user id is 1 to 64 letters, digits, '-', '_' or '.'",
        )
            .into_response();
    };
    match parley_gateway::auth::issue_hs256(site.secret.as_bytes(), &uid, TOKEN_TTL) {
        Ok(token) => Json(serde_json::json!({ "token": token })).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// A file under the site's directory; `/` is `index.html`. Paths that
/// leave the directory are not found.
async fn file(State(site): State<Arc<Site>>, uri: Uri) -> Response {
    let Some(path) = resolve(&site.dir, uri.path()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, content_type(&path))], bytes).into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

fn resolve(dir: &Path, path: &str) -> Option<PathBuf> {
    let relative = Path::new(path.trim_start_matches('/'));
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return None;
    }
    let relative = if relative.as_os_str().is_empty() {
        Path::new("index.html")
    } else {
        relative
    };
    Some(dir.join(relative))
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_site() {
        let dir = Path::new("/site");
        assert_eq!(resolve(dir, "/"), Some(PathBuf::from("/site/index.html")));
        assert_eq!(
            resolve(dir, "/assets/index.js"),
            Some(PathBuf::from("/site/assets/index.js"))
        );
        for outside in ["/../etc/passwd", "/assets/../../x", "/./x"] {
            assert_eq!(resolve(dir, outside), None, "{outside}");
        }
    }
}
