//! Browser assets embedded in the binary, served under `/_/`.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

/// (file name, content type, bytes) of every demo asset.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../../web/demo/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../web/demo/app.js"),
    ),
    (
        "goim.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../web/demo/goim.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../web/demo/style.css"),
    ),
];

fn asset(name: &str) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, ctype, body)) => (
            [
                (header::CONTENT_TYPE, *ctype),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

/// Routes for `/_/` (the demo page) and its assets.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/_/") }))
        .route("/_", get(|| async { Redirect::permanent("/_/") }))
        .route("/_/", get(|| async { asset("index.html") }))
        // Browsers ask for it on every page; answer without a console error.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/_/{file}",
            get(|Path(file): Path<String>| async move { asset(&file) }),
        )
}
