//! The goim HTTP API: `/goim/push/*`, `/goim/online/*`, `/goim/nodes/*`, and
//! herald's JSON push endpoints `/herald/push/keys|mids` (in [`push`]).
//!
//! Paths, parameter names (lists as repeated keys: `mids=1&mids=2`) and the
//! `{code, message, data}` envelope are goim's. Where herald differs it is stricter
//! and clearer: invalid requests get HTTP 400 with code −400, a push the queue did not
//! accept gets HTTP 503 with code −500 (never success), unknown paths get a JSON 404.
//! Route groups sit behind the scopes of [`crate::api_keys`]: pushes need `push`,
//! online counts and the instance list `read`; `/goim/nodes/weighted` is public
//! because clients call it.

mod params;
mod push;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{OriginalUri, RawQuery, Request, State};
use axum::handler::Handler;
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use tracing::debug;

use crate::api_keys::{ApiKeys, KeyName, Scope};
use crate::{Logic, PushError};

// Request parsing reachable without a server (the fuzz targets use it).
#[doc(hidden)]
pub use params::Params;
#[doc(hidden)]
pub use push::check_json_push;

/// An error answered as goim's envelope.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: i32,
    message: String,
}

impl ApiError {
    /// An error with any status and envelope code.
    pub fn new(status: StatusCode, code: i32, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// HTTP 400, code −400.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, -400, message)
    }
}

impl From<PushError> for ApiError {
    fn from(e: PushError) -> Self {
        match e {
            PushError::Invalid(m) => ApiError::bad_request(m),
            PushError::Store(e) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                -500,
                format!("push not sent: {e}"),
            ),
            PushError::Queue(e) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                -500,
                format!("push not sent: {e}"),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"code": self.code, "message": self.message})),
        )
            .into_response()
    }
}

fn ok() -> Response {
    Json(json!({"code": 0, "message": ""})).into_response()
}

fn ok_data(data: impl Serialize) -> Response {
    Json(json!({"code": 0, "message": "", "data": data})).into_response()
}

/// The client's address as the HTTP listener determined it (the peer, or the
/// address a trusted proxy named in `X-Forwarded-For`). The listener sets it as a
/// request extension; it is absent when the router is served some other way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// What the router needs besides [`Logic`].
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Who may call what.
    pub keys: Arc<ApiKeys>,
    /// Keys or mids in one push (`limits.http.max_recipients`); 0 = no limit.
    pub max_recipients: usize,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            keys: ApiKeys::open(),
            max_recipients: 0,
        }
    }
}

/// Handler state.
#[derive(Clone)]
struct ApiState {
    logic: Arc<Logic>,
    max_recipients: usize,
    /// Every route of the router, for the trailing-slash redirect.
    routes: Arc<[(Method, &'static str)]>,
}

type Ctx = State<ApiState>;

async fn online_top(State(st): Ctx, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let p = Params::parse(q);
    let typ = p.text("type")?;
    let limit: i64 = p.required_int("limit")?;
    if limit < 0 {
        return Err(ApiError::bad_request("limit must be positive"));
    }
    let top: Vec<Value> = st
        .logic
        .online_top(typ, limit as usize)
        .into_iter()
        .map(|(room_id, count)| json!({"room_id": room_id, "count": count}))
        .collect();
    Ok(ok_data(top))
}

async fn online_room(State(st): Ctx, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let p = Params::parse(q);
    let typ = p.text("type")?;
    let rooms = p.all("rooms");
    if rooms.is_empty() {
        return Err(ApiError::bad_request("rooms is required"));
    }
    let counts: HashMap<String, i32> = st.logic.online_room(typ, &rooms);
    Ok(ok_data(counts))
}

async fn online_total(State(st): Ctx) -> Response {
    ok_data(st.logic.online_total())
}

async fn nodes_weighted(
    State(st): Ctx,
    RawQuery(q): RawQuery,
    client: Option<Extension<ClientAddr>>,
) -> Response {
    let p = Params::parse(q);
    // Only the listener's verdict counts: `X-Forwarded-For` from a peer that is
    // not a trusted proxy is anyone's claim.
    let client_ip = client.map(|c| c.0 .0.to_string()).unwrap_or_default();
    let r = st
        .logic
        .nodes_weighted(p.one("platform").unwrap_or(""), &client_ip);
    // protobuf JSON names with zero values omitted, as goim renders NodesReply.
    let mut data = serde_json::Map::new();
    let mut put = |k: &str, v: Value, zero: bool| {
        if !zero {
            data.insert(k.to_string(), v);
        }
    };
    put("domain", json!(r.domain), r.domain.is_empty());
    put("tcp_port", json!(r.tcp_port), r.tcp_port == 0);
    put("ws_port", json!(r.ws_port), r.ws_port == 0);
    put("wss_port", json!(r.wss_port), r.wss_port == 0);
    put("heartbeat", json!(r.heartbeat), r.heartbeat == 0);
    put("nodes", json!(r.nodes), r.nodes.is_empty());
    if let Some(b) = &r.backoff {
        put(
            "backoff",
            json!({"max_delay": b.max_delay, "base_delay": b.base_delay, "factor": short_float(b.factor), "jitter": short_float(b.jitter)}),
            false,
        );
    }
    put(
        "heartbeat_max",
        json!(r.heartbeat_max),
        r.heartbeat_max == 0,
    );
    ok_data(Value::Object(data))
}

/// An `f32` as JSON without binary noise (1.8, not 1.7999999523162842).
fn short_float(v: f32) -> Value {
    v.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

async fn nodes_instances(State(st): Ctx) -> Response {
    ok_data(st.logic.instances())
}

/// No route matched. A known path with one trailing slash added is redirected to
/// the path without it, as goim's router (gin, `RedirectTrailingSlash`) does: 301
/// for GET, 307 (method and body kept) for any other method, the query kept.
/// Anything else is a JSON 404.
async fn not_found(State(st): Ctx, method: Method, OriginalUri(uri): OriginalUri) -> Response {
    let path = uri.path();
    if let Some(bare) = path.strip_suffix('/').filter(|b| !b.is_empty()) {
        // axum answers HEAD with the GET route, so gin's "same method" is GET here.
        let served = |m: &Method| *m == method || (*m == Method::GET && method == Method::HEAD);
        if st.routes.iter().any(|(m, p)| *p == bare && served(m)) {
            let status = if method == Method::GET {
                StatusCode::MOVED_PERMANENTLY
            } else {
                StatusCode::TEMPORARY_REDIRECT
            };
            let location = match uri.query() {
                Some(q) => format!("{bare}?{q}"),
                None => bare.to_string(),
            };
            return (status, [(header::LOCATION, location)]).into_response();
        }
    }
    ApiError::new(
        StatusCode::NOT_FOUND,
        -404,
        format!("no such endpoint: {method} {path}"),
    )
    .into_response()
}

/// A group of routes that remembers its methods and paths (for [`not_found`])
/// and answers a known path's other methods with the JSON 405.
struct Group {
    router: Router<ApiState>,
    routes: Vec<(Method, &'static str)>,
}

impl Group {
    fn new() -> Group {
        Group {
            router: Router::new(),
            routes: Vec::new(),
        }
    }

    fn get<H: Handler<T, ApiState>, T: 'static>(mut self, path: &'static str, h: H) -> Group {
        self.routes.push((Method::GET, path));
        self.router = self.router.route(path, get(h));
        self
    }

    fn post<H: Handler<T, ApiState>, T: 'static>(mut self, path: &'static str, h: H) -> Group {
        self.routes.push((Method::POST, path));
        self.router = self.router.route(path, post(h));
        self
    }

    /// The group's router; its routes are added to `all`.
    fn finish(self, all: &mut Vec<(Method, &'static str)>) -> Router<ApiState> {
        all.extend(self.routes);
        self.router.method_not_allowed_fallback(method_not_allowed)
    }
}

async fn method_not_allowed(method: Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        -405,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn log_request(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let res = next.run(req).await;
    // The scope check (inside this layer) names the key it admitted.
    let key = res.extensions().get::<KeyName>().map(|k| k.0.clone());
    debug!(%method, %path, status = res.status().as_u16(), key, elapsed_us = started.elapsed().as_micros() as u64, "http");
    res
}

/// The API router: goim's endpoints and herald's JSON pushes, each group behind
/// its scope. Other routes (metrics, web assets, health checks) can be merged into
/// it; they are public unless wrapped with [`ApiKeys::protect`].
pub fn router(logic: Arc<Logic>, opts: ApiOptions) -> Router {
    let keys = opts.keys.clone();
    let mut routes = Vec::new();
    // Each group gets its 405 fallback before the scope check wraps it.
    let push = Group::new()
        .post("/goim/push/keys", push::push_keys)
        .post("/goim/push/mids", push::push_mids)
        .post("/goim/push/room", push::push_room)
        .post("/goim/push/all", push::push_all)
        .post("/herald/push/keys", push::json_push_keys)
        .post("/herald/push/mids", push::json_push_mids)
        .finish(&mut routes);
    let read = Group::new()
        .get("/goim/online/top", online_top)
        .get("/goim/online/room", online_room)
        .get("/goim/online/total", online_total)
        .get("/goim/nodes/instances", nodes_instances)
        .finish(&mut routes);
    let public = Group::new()
        .get("/goim/nodes/weighted", nodes_weighted)
        .finish(&mut routes);
    Router::new()
        .merge(keys.protect(Scope::Push, push))
        .merge(keys.protect(Scope::Read, read))
        .merge(public)
        .fallback(not_found)
        .layer(middleware::from_fn(log_request))
        .with_state(ApiState {
            logic,
            max_recipients: opts.max_recipients,
            routes: routes.into(),
        })
}
