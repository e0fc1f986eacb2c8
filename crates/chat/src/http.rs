//! The chat's HTTP API under `/chat/api`: JSON in and out, sessions as
//! `Authorization: Bearer <token>`, every error a `{code, message}` body with
//! its status (see `docs/chat.md`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::{DefaultBodyLimit, Multipart, Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use herald_logic::http::ClientAddr;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use crate::service::{Attempt, Caller, Chat, ChatError, Draft};
use crate::{now_ms, Id, Page, VisitorQuery, DEFAULT_PAGE};

/// Largest request body the API reads.
pub const MAX_BODY: usize = 64 * 1024;

type Ctx = State<Arc<Chat>>;
type Addr = Option<Extension<ClientAddr>>;

/// The API's routes, to be merged into the HTTP API port.
pub fn router(chat: Arc<Chat>) -> Router {
    // An upload's body: the file and the multipart framing around it.
    let upload_limit = chat.limits().max_upload + 16 * 1024;
    let api = Router::new()
        .route(
            "/conversations/{id}/uploads",
            post(upload).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/uploads/{id}", get(download))
        .route("/register", post(register))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/password", post(password))
        .route("/agents", post(add_agent))
        .route("/visitors", post(create_visitor).get(visitors))
        .route("/me", get(me))
        .route("/conversations", get(conversations).post(open_direct))
        .route("/conversations/{id}/messages", get(history).post(send))
        .route("/conversations/{id}/read", post(read))
        .route("/conversations/{id}/typing", post(typing))
        .route("/conversations/{id}/unread", get(unread))
        .route("/conversations/{id}/assignee", put(assign))
        .route("/blacklist", get(blocked).post(block))
        .route("/blacklist/{ip}", delete(unblock))
        .route("/canned", get(canned).post(add_canned))
        .route("/canned/{id}", delete(remove_canned))
        .fallback(not_found)
        .layer(axum::middleware::map_response(json_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(chat);
    Router::new().nest("/chat/api", api)
}

/// Answers the framework's own refusals (a body over [`MAX_BODY`], a method a
/// route does not take, a path that does not parse) as API errors too.
async fn json_errors(res: Response) -> Response {
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let status = res.status();
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let message = status.canonical_reason().unwrap_or("error").to_lowercase();
    ApiError::new(status, code, message).into_response()
}

/// An error as the API answers it.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> ApiError {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (
            self.status,
            Json(json!({"code": self.code, "message": self.message})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        res
    }
}

type Answer = Result<Response, ApiError>;

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such chat API route")
}

/// The JSON body as `T`, or a 400 saying what is wrong with it.
fn body<T: DeserializeOwned>(headers: &HeaderMap, bytes: &Bytes) -> Result<T, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as application/json",
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// The query string's parameters (a repeated one: the last wins; an unknown
/// one is refused).
fn query<T: DeserializeOwned>(q: Option<String>) -> Result<T, ApiError> {
    let q = q.unwrap_or_default();
    let map: serde_json::Map<String, serde_json::Value> = form_urlencoded::parse(q.as_bytes())
        .into_owned()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| ApiError::bad_request(format!("invalid query parameters: {e}")))
}

fn ip(addr: &Addr) -> Option<String> {
    addr.as_ref().map(|a| a.0 .0.to_string())
}

/// The caller named by the `Authorization: Bearer` header.
async fn caller(chat: &Chat, headers: &HeaderMap, addr: &Addr) -> Result<Caller, ApiError> {
    caller_or(chat, headers, addr, None).await
}

/// The caller named by the `Authorization: Bearer` header, or by `token` when
/// there is none.
async fn caller_or(
    chat: &Chat,
    headers: &HeaderMap,
    addr: &Addr,
    token: Option<&str>,
) -> Result<Caller, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or(token)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send the session token as Authorization: Bearer <token>",
            )
        })?;
    Ok(chat
        .caller(token.trim(), ip(addr).as_deref(), now_ms())
        .await?)
}

fn path_id(raw: &str) -> Result<Id, ApiError> {
    raw.parse::<Id>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::bad_request("ids are positive integers"))
}

fn created(v: impl serde::Serialize) -> Response {
    (StatusCode::CREATED, Json(v)).into_response()
}

fn ok(v: impl serde::Serialize) -> Response {
    Json(v).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Register {
    shop: String,
    username: String,
    password: String,
    nickname: Option<String>,
}

async fn register(State(chat): Ctx, addr: Addr, headers: HeaderMap, b: Bytes) -> Answer {
    let r: Register = body(&headers, &b)?;
    chat.admit(Attempt::Login, ip(&addr).as_deref())?;
    let nickname = r.nickname.unwrap_or_else(|| r.username.clone());
    let issued = chat
        .register(&r.shop, &r.username, &r.password, &nickname, now_ms())
        .await?;
    Ok(created(issued))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    username: String,
    password: String,
}

async fn login(State(chat): Ctx, addr: Addr, headers: HeaderMap, b: Bytes) -> Answer {
    let l: Login = body(&headers, &b)?;
    chat.admit(Attempt::Login, ip(&addr).as_deref())?;
    Ok(ok(chat.login(&l.username, &l.password, now_ms()).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Password {
    current: String,
    new: String,
}

async fn password(State(chat): Ctx, addr: Addr, headers: HeaderMap, b: Bytes) -> Answer {
    let who = caller(&chat, &headers, &addr).await?;
    let p: Password = body(&headers, &b)?;
    Ok(ok(chat
        .change_password(&who, &p.current, &p.new, now_ms())
        .await?))
}

async fn logout(State(chat): Ctx, addr: Addr, headers: HeaderMap) -> Answer {
    let who = caller(&chat, &headers, &addr).await?;
    chat.logout(&who).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn add_agent(State(chat): Ctx, addr: Addr, headers: HeaderMap, b: Bytes) -> Answer {
    let who = caller(&chat, &headers, &addr).await?;
    let r: Login = body(&headers, &b)?;
    let user = chat
        .add_agent(&who, &r.username, &r.password, &r.username, now_ms())
        .await?;
    Ok(created(user))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewVisitor {
    shop: String,
    nickname: Option<String>,
}

async fn create_visitor(State(chat): Ctx, addr: Addr, headers: HeaderMap, b: Bytes) -> Answer {
    let v: NewVisitor = body(&headers, &b)?;
    chat.admit(Attempt::Visitor, ip(&addr).as_deref())?;
    let (issued, conversation) = chat
        .create_visitor(
            &v.shop,
            v.nickname.as_deref(),
            ip(&addr).as_deref(),
            now_ms(),
        )
        .await?;
    Ok(created(json!({
        "token": issued.token,
        "expires_at": issued.expires_at,
        "user": issued.user,
        "shop": issued.shop,
        "conversation": conversation,
    })))
}

async fn me(State(chat): Ctx, addr: Addr, headers: HeaderMap) -> Answer {
    let who = caller(&chat, &headers, &addr).await?;
    let shop = chat
        .store()
        .shop(who.user.shop_id)
        .await
        .map_err(ChatError::from)?;
    Ok(ok(json!({"user": who.user, "shop": shop})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Paging {
    #[serde(default)]
    offset: Option<String>,
    #[serde(default)]
    limit: Option<String>,
    #[serde(default)]
    before: Option<String>,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    online: Option<String>,
}

fn number<T: std::str::FromStr>(name: &str, v: &Option<String>, default: T) -> Result<T, ApiError> {
    match v {
        None => Ok(default),
        Some(s) => s
            .parse()
            .map_err(|_| ApiError::bad_request(format!("{name} must be a non-negative integer"))),
    }
}

async fn conversations(
    State(chat): Ctx,
    addr: Addr,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Answer {
    let who = caller(&chat, &headers, &addr).await?;
    let p: Paging = query(q)?;
    let list = chat
        .conversations(
            &who,
            number("offset", &p.offset, 0u32)?,
            number("limit", &p.limit, 20u32)?,
        )
        .await?;
    Ok(ok(json!({ "conversations": list })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Direct {
    with: Id,
}

async fn open_direct(State(chat): Ctx, addr: Addr, headers: HeaderMap, b: Bytes) -> Answer {
    let who = caller(&chat, &headers, &addr).await?;
    let d: Direct = body(&headers, &b)?;
    Ok(ok(chat.direct(&who, d.with, now_ms()).await?))
}

async fn history(
    State(chat): Ctx,
    addr: Addr,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Answer {
    let who = caller(&chat, &headers, &addr).await?;
    let id = path_id(&id)?;
    let p: Paging = query(q)?;
    let bound = |name, v: &Option<String>| v.as_ref().map(|_| number(name, v, 0)).transpose();
    let page = Page::of(
        bound("before", &p.before)?,
        bound("after", &p.after)?,
        number("limit", &p.limit, DEFAULT_PAGE)?,
    )
    .map_err(ApiError::bad_request)?;
    Ok(ok(chat.history(&who, id, page).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Send {
    #[serde(default = "text_kind")]
    kind: String,
    body: String,
    client_id: Option<String>,
}

fn text_kind() -> String {
    "text".into()
}

async fn send(
    State(chat): Ctx,
    addr: Addr,
    headers: HeaderMap,
    Path(id): Path<String>,
    b: Bytes,
) -> Answer {
    let who = caller(&chat, &headers, &addr).await?;
    let id = path_id(&id)?;
    let s: Send = body(&headers, &b)?;
    let sent = chat
        .send(
            &who,
            Draft {
                conversation: id,
                kind: &s.kind,
                body: &s.body,
                client_id: s.client_id.as_deref(),
            },
            now_ms(),
        )
        .await?;
    let status = if sent.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(sent)).into_response())
}

async fn upload(
    State(chat): Ctx,
    addr: Addr,
    headers: HeaderMap,
    Path(id): Path<String>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Answer {
    let who = caller(&chat, &headers, &addr).await?;
    let id = path_id(&id)?;
    let mut multipart = multipart.map_err(|e| {
        ApiError::bad_request(format!(
            "send the file as multipart/form-data: {}",
            e.body_text()
        ))
    })?;
    let mut file = None;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(&e))?
    {
        if field.name() == Some("file") {
            let data = field.bytes().await.map_err(|e| multipart_error(&e))?;
            file = Some(data);
            break;
        }
    }
    let data = file.ok_or_else(|| ApiError::bad_request("the form has no \"file\" field"))?;
    Ok(created(chat.upload(&who, id, &data, now_ms()).await?))
}

fn multipart_error(e: &MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            e.body_text(),
        );
    }
    ApiError::bad_request(format!("malformed multipart body: {}", e.body_text()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenQuery {
    token: Option<String>,
}

async fn download(
    State(chat): Ctx,
    addr: Addr,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Answer {
    let t: TokenQuery = query(q)?;
    let who = caller_or(&chat, &headers, &addr, t.token.as_deref()).await?;
    let (upload, data) = chat.download(&who, &id).await?;
    Ok((
        [
            (header::CONTENT_TYPE, upload.content_type),
            // The bytes under an id never change; only members may see them.
            (
                header::CACHE_CONTROL,
                "private, max-age=31536000, immutable".to_string(),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; sandbox".to_string(),
            ),
        ],
        data,
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Read {
    position: Id,
}

async fn read(
    State(chat): Ctx,
    addr: Addr,
    headers: HeaderMap,
    Path(id): Path<String>,
    b: Bytes,
) -> Answer {
    let who = caller(&chat, &headers, &addr).await?;
    let id = path_id(&id)?;
    let r: Read = body(&headers, &b)?;
    let position = chat.mark_read(&who, id, r.position).await?;
    Ok(ok(json!({ "position": position })))
}

async fn typing(
    State(chat): Ctx,
    addr: Addr,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    let who = caller(&chat, &headers, &addr).await?;
    let id = path_id(&id)?;
    chat.typing(&who, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn unread(
    State(chat): Ctx,
    addr: Addr,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    let who = caller(&chat, &headers, &addr).await?;
    let id = path_id(&id)?;
    Ok(ok(json!({ "unread": chat.unread(&who, id).await? })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Assign {
    agent_id: Option<Id>,
}

async fn assign(
    State(chat): Ctx,
    addr: Addr,
    headers: HeaderMap,
    Path(id): Path<String>,
    b: Bytes,
) -> Answer {
    let who = caller(&chat, &headers, &addr).await?;
    let id = path_id(&id)?;
    let a: Assign = body(&headers, &b)?;
    chat.assign(&who, id, a.agent_id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn visitors(
    State(chat): Ctx,
    addr: Addr,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Answer {
    let who = caller(&chat, &headers, &addr).await?;
    let p: Paging = query(q)?;
    let list = chat
        .visitors(
            &who,
            &VisitorQuery {
                seen_since: match &p.since {
                    Some(_) => Some(number("since", &p.since, 0i64)?),
                    None => None,
                },
                search: p.q.filter(|s| !s.is_empty()),
                offset: number("offset", &p.offset, 0u32)?,
                limit: number("limit", &p.limit, 20u32)?,
            },
            match p.online.as_deref() {
                None | Some("false") => false,
                Some("true") => true,
                Some(_) => return Err(ApiError::bad_request("online must be true or false")),
            },
        )
        .await?;
    Ok(ok(json!({ "visitors": list })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Block {
    ip: String,
}

async fn blocked(State(chat): Ctx, addr: Addr, headers: HeaderMap) -> Answer {
    let who = caller(&chat, &headers, &addr).await?;
    Ok(ok(json!({ "blacklist": chat.blocked(&who).await? })))
}

async fn block(State(chat): Ctx, addr: Addr, headers: HeaderMap, b: Bytes) -> Answer {
    let who = caller(&chat, &headers, &addr).await?;
    let r: Block = body(&headers, &b)?;
    chat.block(&who, &r.ip, now_ms()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn unblock(
    State(chat): Ctx,
    addr: Addr,
    headers: HeaderMap,
    Path(ip): Path<String>,
) -> Answer {
    let who = caller(&chat, &headers, &addr).await?;
    if !chat.unblock(&who, &ip).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "that address is not blocked",
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCanned {
    title: String,
    body: String,
}

async fn canned(State(chat): Ctx, addr: Addr, headers: HeaderMap) -> Answer {
    let who = caller(&chat, &headers, &addr).await?;
    Ok(ok(json!({ "canned": chat.canned(&who).await? })))
}

async fn add_canned(State(chat): Ctx, addr: Addr, headers: HeaderMap, b: Bytes) -> Answer {
    let who = caller(&chat, &headers, &addr).await?;
    let c: NewCanned = body(&headers, &b)?;
    Ok(created(
        chat.add_canned(&who, &c.title, &c.body, now_ms()).await?,
    ))
}

async fn remove_canned(
    State(chat): Ctx,
    addr: Addr,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    let who = caller(&chat, &headers, &addr).await?;
    let id = path_id(&id)?;
    if !chat.remove_canned(&who, id).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "canned reply not found",
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Chat events go out through logic's push path, like any backend's pushes.
#[async_trait::async_trait]
impl crate::Publisher for herald_logic::Logic {
    async fn push_mids(&self, op: i32, mids: &[Id], body: Vec<u8>) -> Result<(), String> {
        herald_logic::Logic::push_mids(self, op, mids, bytes::Bytes::from(body))
            .await
            .map_err(|e| e.to_string())
    }

    async fn online(&self, mids: &[Id]) -> Result<Vec<Id>, String> {
        self.online_mids(mids).await.map_err(|e| e.to_string())
    }
}
