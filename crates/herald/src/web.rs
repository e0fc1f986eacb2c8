//! Browser assets embedded in the binary, served under `/_/`: the demo page, the
//! JavaScript client SDK under `/_/sdk/` (importable from any origin), and
//! `/_/config.json`, which tells the demo page where clients connect and whether
//! the API wants a key; and, where the chat runs, its pages (`/chat/` the agent
//! console, `/chat/visitor` the visitor window) under a strict
//! Content-Security-Policy.
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

/// The chat's pages (`web/chat`): the agent console, the visitor window, and
/// the modules and style they share, served under `/chat/assets/`.
const CHAT: &[(&str, &str, &[u8])] = &[
    (
        "console.html",
        "text/html; charset=utf-8",
        include_bytes!("../../../web/chat/console.html"),
    ),
    (
        "visitor.html",
        "text/html; charset=utf-8",
        include_bytes!("../../../web/chat/visitor.html"),
    ),
    (
        "chat.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../web/chat/chat.css"),
    ),
    (
        "client.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../web/chat/client.js"),
    ),
    (
        "ui.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../web/chat/ui.js"),
    ),
    (
        "conversation.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../web/chat/conversation.js"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../web/chat/console.js"),
    ),
    (
        "visitor.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../web/chat/visitor.js"),
    ),
];

/// What a chat page may load: its own scripts, styles and images (and the
/// previews of images being sent), the WebSocket on any port of any host the
/// server names. Nothing inline: a message that got markup in could not run it.
const CHAT_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' blob:; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'";

/// A chat page with its security headers; the console may not be framed (the
/// visitor window may: shops embed it).
fn chat_page(name: &str, framed: bool) -> Response {
    let mut res = embedded(CHAT, name);
    let h = res.headers_mut();
    let csp = if framed {
        CHAT_CSP.to_string()
    } else {
        format!("{CHAT_CSP}; frame-ancestors 'none'")
    };
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_str(&csp).expect("an ASCII policy"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    res
}

/// The chat's pages: the agent console on `/chat/`, the visitor window on
/// `/chat/visitor?shop=NAME`, their files under `/chat/assets/`.
pub fn chat_router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/chat", get(|| async { Redirect::permanent("/chat/") }))
        .route("/chat/", get(|| async { chat_page("console.html", false) }))
        .route(
            "/chat/visitor",
            get(|| async { chat_page("visitor.html", true) }),
        )
        .route(
            "/chat/assets/{file}",
            get(|Path(file): Path<String>| async move {
                // The pages only on their own routes, with their policy.
                if file.ends_with(".html") {
                    return embedded(&[], &file);
                }
                let mut res = embedded(CHAT, &file);
                res.headers_mut().insert(
                    header::X_CONTENT_TYPE_OPTIONS,
                    header::HeaderValue::from_static("nosniff"),
                );
                res
            }),
        )
}

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
