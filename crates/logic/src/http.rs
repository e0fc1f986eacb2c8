//! The goim HTTP API: `/goim/push/*`, `/goim/online/*`, `/goim/nodes/*`.
//!
//! Paths, parameter names (lists as repeated keys: `mids=1&mids=2`) and the
//! `{code, message, data}` envelope are goim's. Where herald differs it is stricter
//! and clearer: invalid requests get HTTP 400 with code −400, a push the queue did not
//! accept gets HTTP 503 with code −500 (never success), unknown paths get a JSON 404.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{OriginalUri, RawQuery, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use tracing::debug;

use crate::{Logic, PushError};

/// An error answered as goim's envelope.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: i32,
    message: String,
}

impl ApiError {
    /// HTTP 400, code −400.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: -400,
            message: message.into(),
        }
    }
}

impl From<PushError> for ApiError {
    fn from(e: PushError) -> Self {
        match e {
            PushError::Invalid(m) => ApiError::bad_request(m),
            PushError::Store(e) => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: -500,
                message: format!("push not sent: {e}"),
            },
            PushError::Queue(e) => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: -500,
                message: format!("push not sent: {e}"),
            },
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

/// Query parameters with repeated keys.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(raw: Option<String>) -> Params {
        Params(
            form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
        )
    }

    fn one(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn text(&self, name: &str) -> Result<&str, ApiError> {
        match self.one(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(ApiError::bad_request(format!("{name} is required"))),
        }
    }

    fn int<T: FromStr + Default>(&self, name: &str) -> Result<T, ApiError> {
        match self.one(name) {
            None | Some("") => Ok(T::default()),
            Some(v) => v.trim().parse().map_err(|_| {
                ApiError::bad_request(format!("{name} must be an integer, got {v:?}"))
            }),
        }
    }

    /// A required integer; like goim, zero counts as missing.
    fn required_int<T: FromStr + Default + PartialEq>(&self, name: &str) -> Result<T, ApiError> {
        let v: T = self.int(name)?;
        if v == T::default() {
            return Err(ApiError::bad_request(format!(
                "{name} is required and must be non-zero"
            )));
        }
        Ok(v)
    }
}

async fn read_body(logic: &Logic, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let limit = logic.config().max_push_body;
    let too_large = || ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: -400,
        message: format!("push body exceeds {limit} bytes"),
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(too_large());
        }
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())
}

type Ctx = State<Arc<Logic>>;

async fn push_keys(
    State(logic): Ctx,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let p = Params::parse(q);
    let op: i32 = p.int("operation")?;
    let keys = p.all("keys");
    if keys.is_empty() {
        return Err(ApiError::bad_request("keys is required"));
    }
    let msg = read_body(&logic, &headers, body).await?;
    logic.push_keys(op, &keys, msg).await?;
    Ok(ok())
}

async fn push_mids(
    State(logic): Ctx,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let p = Params::parse(q);
    let op: i32 = p.int("operation")?;
    let mids = p
        .all("mids")
        .iter()
        .map(|m| {
            m.trim()
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("mids must be integers, got {m:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if mids.is_empty() {
        return Err(ApiError::bad_request("mids is required"));
    }
    let msg = read_body(&logic, &headers, body).await?;
    logic.push_mids(op, &mids, msg).await?;
    Ok(ok())
}

async fn push_room(
    State(logic): Ctx,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let p = Params::parse(q);
    let op: i32 = p.required_int("operation")?;
    let typ = p.text("type")?.to_string();
    let room = p.text("room")?.to_string();
    let msg = read_body(&logic, &headers, body).await?;
    logic.push_room(op, &typ, &room, msg).await?;
    Ok(ok())
}

async fn push_all(
    State(logic): Ctx,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let p = Params::parse(q);
    let op: i32 = p.required_int("operation")?;
    let speed: i32 = p.int("speed")?;
    if speed < 0 {
        return Err(ApiError::bad_request("speed must not be negative"));
    }
    let msg = read_body(&logic, &headers, body).await?;
    logic.push_all(op, speed, msg).await?;
    Ok(ok())
}

async fn online_top(State(logic): Ctx, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let p = Params::parse(q);
    let typ = p.text("type")?;
    let limit: i64 = p.required_int("limit")?;
    if limit < 0 {
        return Err(ApiError::bad_request("limit must be positive"));
    }
    let top: Vec<Value> = logic
        .online_top(typ, limit as usize)
        .into_iter()
        .map(|(room_id, count)| json!({"room_id": room_id, "count": count}))
        .collect();
    Ok(ok_data(top))
}

async fn online_room(State(logic): Ctx, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let p = Params::parse(q);
    let typ = p.text("type")?;
    let rooms = p.all("rooms");
    if rooms.is_empty() {
        return Err(ApiError::bad_request("rooms is required"));
    }
    let counts: HashMap<String, i32> = logic.online_room(typ, &rooms);
    Ok(ok_data(counts))
}

async fn online_total(State(logic): Ctx) -> Response {
    ok_data(logic.online_total())
}

async fn nodes_weighted(State(logic): Ctx, RawQuery(q): RawQuery, headers: HeaderMap) -> Response {
    let p = Params::parse(q);
    let client_ip = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let r = logic.nodes_weighted(p.one("platform").unwrap_or(""), &client_ip);
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

async fn nodes_instances(State(logic): Ctx) -> Response {
    ok_data(logic.instances())
}

async fn not_found(method: Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: -404,
        message: format!("no such endpoint: {method} {}", uri.path()),
    }
}

async fn method_not_allowed(method: Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: -405,
        message: format!("{method} is not allowed on {}", uri.path()),
    }
}

async fn log_request(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let res = next.run(req).await;
    debug!(%method, %path, status = res.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "http");
    res
}

/// The goim API router. Other routes (metrics, web assets) can be merged into it.
pub fn router(logic: Arc<Logic>) -> Router {
    let goim = Router::new()
        .route("/push/keys", post(push_keys))
        .route("/push/mids", post(push_mids))
        .route("/push/room", post(push_room))
        .route("/push/all", post(push_all))
        .route("/online/top", get(online_top))
        .route("/online/room", get(online_room))
        .route("/online/total", get(online_total))
        .route("/nodes/weighted", get(nodes_weighted))
        .route("/nodes/instances", get(nodes_instances))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found);
    Router::new()
        .nest("/goim", goim)
        .fallback(not_found)
        .layer(middleware::from_fn(log_request))
        .with_state(logic)
}
