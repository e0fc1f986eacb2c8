//! Browser assets embedded in the binary, served under `/_/`: the demo page, the
//! JavaScript client SDK under `/_/sdk/` (importable from any origin), and
//! `/_/config.json`, which tells the demo page where clients connect and whether
//! the API wants a key.
//!
//! The assets and the configuration are public: they hold nothing secret, and the
//! page asks for a key before it calls the API.

use std::sync::Arc;

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

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
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../web/demo/style.css"),
    ),
    (
        "apikey.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../web/demo/apikey.js"),
    ),
];

/// The client SDK (`web/sdk`), served under `/_/sdk/`.
const SDK: &[(&str, &str, &[u8])] = &[
    (
        "herald.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../web/sdk/herald.js"),
    ),
    (
        "herald.d.ts",
        "application/typescript; charset=utf-8",
        include_bytes!("../../../web/sdk/herald.d.ts"),
    ),
    (
        "package.json",
        "application/json",
        include_bytes!("../../../web/sdk/package.json"),
    ),
    (
        "README.md",
        "text/plain; charset=utf-8",
        include_bytes!("../../../web/sdk/README.md"),
    ),
];

fn asset(name: &str) -> Response {
    embedded(ASSETS, name)
}

/// An SDK file. Any origin may load it: applications import the client from
/// the server they connect to (module scripts are fetched with CORS).
fn sdk_asset(name: &str) -> Response {
    let mut res = embedded(SDK, name);
    if res.status().is_success() {
        res.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::HeaderValue::from_static("*"),
        );
    }
    res
}

/// File `name` of `assets` ((file name, content type, bytes) each) with its
/// content type, revalidated by browsers on each use; 404 when there is none.
pub(crate) fn embedded(assets: &[(&str, &'static str, &'static [u8])], name: &str) -> Response {
    match assets.iter().find(|(n, _, _)| *n == name) {
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

/// Where a browser client connects: `<ws|wss>://<host>:<port><path>`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientEndpoint {
    /// Host to connect to; `None` = the host the page was loaded from.
    pub ws_host: Option<String>,
    /// Plain WebSocket port, if any.
    pub ws_port: Option<u16>,
    /// Secure WebSocket port, if any.
    pub wss_port: Option<u16>,
    /// Path of the WebSocket endpoint.
    pub ws_path: String,
}

/// Produces the client endpoint at request time (in a cluster it follows the
/// registered comets).
pub type Endpoints = Arc<dyn Fn() -> ClientEndpoint + Send + Sync>;

/// What the demo page is told about this server.
#[derive(Clone)]
pub struct DemoSettings {
    /// The API wants a key (`[api] keys` is not empty).
    pub key_required: bool,
    /// Where its WebSocket client connects.
    pub endpoints: Endpoints,
}

#[derive(Serialize)]
struct PageConfig {
    key_required: bool,
    #[serde(flatten)]
    endpoint: ClientEndpoint,
}

/// Routes for `/_/` (the demo page), its assets and its configuration.
pub fn router<S: Clone + Send + Sync + 'static>(demo: DemoSettings) -> Router<S> {
    Router::new()
        .route(
            "/_/config.json",
            get(move || {
                let demo = demo.clone();
                async move {
                    (
                        [(header::CACHE_CONTROL, "no-cache")],
                        Json(PageConfig {
                            key_required: demo.key_required,
                            endpoint: (demo.endpoints)(),
                        }),
                    )
                }
            }),
        )
        .route("/", get(|| async { Redirect::temporary("/_/") }))
        .route("/_", get(|| async { Redirect::permanent("/_/") }))
        .route("/_/", get(|| async { asset("index.html") }))
        // Browsers ask for it on every page; answer without a console error.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/_/{file}",
            get(|Path(file): Path<String>| async move { asset(&file) }),
        )
        .route(
            "/_/sdk/{file}",
            get(|Path(file): Path<String>| async move { sdk_asset(&file) }),
        )
}
