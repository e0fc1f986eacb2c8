//! Chat connections on the goim sockets: a client whose auth body is
//! `{"chat": "<session token>"}` connects as its chat user, whatever the
//! process's `[auth]` mode says for other clients, and may receive the chat's
//! events (op 5) only: no room, no other op, until its session expires.
//!
//! Its frames of ops 4 (send), 18 (sync) and 20 (read) are the chat's: logic
//! answers each with op 5, 19 or 21 and the request's seq (see `docs/chat.md`).
//! A goim client's frames of those ops get goim's behaviour, unchanged.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use herald_logic::{Authenticator, Identity};
use herald_rpc::{ConnectReq, ErrorKind, Grant, Proto, ReceiveReq, RpcError, RpcResult};
use serde::{Deserialize, Serialize};

use crate::service::{
    chat_mid, Caller, Chat, ChatError, Publisher, Sent, Synced, CHAT_MID_BASE, EVENT_OP,
};
use crate::{now_ms, Id, Page, DEFAULT_PAGE};

/// A chat connection's send (body: [`SendFrame`]); answered with op 5.
pub const SEND_OP: i32 = 4;
/// The reply to a send, and every event (the same op: replies carry the
/// request's seq and `"type": "sent"` or `"error"`).
pub const SEND_REPLY_OP: i32 = 5;
/// A sync (body: [`SyncFrame`]); answered with op 19.
pub const SYNC_OP: i32 = 18;
pub const SYNC_REPLY_OP: i32 = 19;
/// A read acknowledgement (body: [`ReadFrame`]); answered with op 21.
pub const READ_OP: i32 = 20;
pub const READ_REPLY_OP: i32 = 21;

/// The process's authenticator with chat connections recognised first.
pub struct ChatAuthenticator {
    chat: Arc<Chat>,
    inner: Arc<dyn Authenticator>,
}

impl ChatAuthenticator {
    /// Chat tokens checked by `chat`, every other client by `inner`.
    pub fn new(chat: Arc<Chat>, inner: Arc<dyn Authenticator>) -> ChatAuthenticator {
        ChatAuthenticator { chat, inner }
    }
}

/// The session token of a chat client's auth body, if it is one.
fn chat_token(body: &[u8]) -> Option<String> {
    // Only a JSON object whose `chat` member is a string: goim's bodies never
    // have one.
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("chat")?.as_str().map(String::from)
}

/// The address part of `ip:port` (or `[v6]:port`).
fn host(addr: &str) -> Option<String> {
    addr.parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.ip().to_string())
}

#[async_trait]
impl Authenticator for ChatAuthenticator {
    async fn authenticate(&self, req: &ConnectReq) -> RpcResult<Identity> {
        let Some(token) = chat_token(&req.token) else {
            let identity = self.inner.authenticate(req).await?;
            if identity.mid >= CHAT_MID_BASE {
                // A chat user's id on the goim side: only its token gives it.
                return Err(RpcError::new(
                    ErrorKind::Unauthenticated,
                    "member ids from 2^52 up belong to the chat's users",
                ));
            }
            return Ok(identity);
        };
        let ip = host(&req.client_addr);
        let caller = self
            .chat
            .caller(&token, ip.as_deref(), now_ms())
            .await
            .map_err(|e| match e {
                ChatError::Unavailable(m) => RpcError::unavailable(m),
                other => RpcError::new(ErrorKind::Unauthenticated, other.to_string()),
            })?;
        // Seen now: the visitor lists sort by it. (Not a reason to refuse.)
        let _ = self.chat.seen(caller.user.id, now_ms()).await;
        Ok(Identity {
            mid: chat_mid(caller.user.id),
            key: String::new(),
            answered: true,
            room_id: String::new(),
            accepts: vec![EVENT_OP],
            grant: Some(Grant {
                rooms: Vec::new(),
                any_room: false,
                ops: vec![EVENT_OP],
                any_op: false,
                expires_at: caller.session.exp,
                context: context(&token, ip.as_deref()),
            }),
        })
    }

    async fn answer(&self, req: &ReceiveReq) -> RpcResult<Option<Proto>> {
        if req.mid < CHAT_MID_BASE {
            return self.inner.answer(req).await;
        }
        let Some(p) = &req.proto else {
            return Ok(None);
        };
        let reply_op = match p.op {
            SEND_OP => SEND_REPLY_OP,
            SYNC_OP => SYNC_REPLY_OP,
            READ_OP => READ_REPLY_OP,
            _ => return Ok(None),
        };
        let reply = match self.op(req, p).await {
            Ok(r) => r,
            Err(e) => Reply::Error {
                status: e.status(),
                code: e.code(),
                message: e.to_string(),
            },
        };
        // (Serializing these cannot fail: strings, integers and messages.)
        let body = serde_json::to_vec(&reply).unwrap_or_default();
        Ok(Some(Proto {
            ver: p.ver,
            op: reply_op,
            seq: p.seq,
            body: Bytes::from(body),
        }))
    }

    fn mode(&self) -> &'static str {
        self.inner.mode()
    }
}

impl ChatAuthenticator {
    /// Does what a chat connection's frame asks, as its session's user.
    async fn op(&self, req: &ReceiveReq, p: &Proto) -> Result<Reply, ChatError> {
        let caller = self.connection_caller(req).await?;
        let chat = &self.chat;
        let now = now_ms();
        match p.op {
            SEND_OP => {
                let f: SendFrame = frame(&p.body)?;
                let c = chat
                    .conversation_or_own(&caller, f.conversation_id, now)
                    .await?;
                let kind = f.kind.as_deref().unwrap_or("text");
                let sent = chat
                    .send(&caller, c, kind, &f.body, f.client_id.as_deref(), now)
                    .await?;
                Ok(Reply::Sent(sent))
            }
            SYNC_OP => {
                let f: SyncFrame = frame(&p.body)?;
                let c = chat
                    .conversation_or_own(&caller, f.conversation_id, now)
                    .await?;
                let page = Page::of(f.before, f.after, f.limit.unwrap_or(DEFAULT_PAGE))
                    .map_err(|e| ChatError::BadRequest(e.into()))?;
                Ok(Reply::Sync(chat.history(&caller, c, page).await?))
            }
            _ => {
                let f: ReadFrame = frame(&p.body)?;
                let c = chat
                    .conversation_or_own(&caller, f.conversation_id, now)
                    .await?;
                let position = chat.mark_read(&caller, c, f.position).await?;
                let unread = chat.unread(&caller, c).await?;
                Ok(Reply::Read {
                    conversation_id: c,
                    position,
                    unread,
                })
            }
        }
    }

    /// The caller behind a chat connection's frame: its session token and
    /// address, from the context of the connection's grant (set at connect,
    /// replaced by a refresh), checked as on every HTTP call (signature, expiry,
    /// the user still there, the session not ended, a visitor's address not
    /// blocked since).
    async fn connection_caller(&self, req: &ReceiveReq) -> Result<Caller, ChatError> {
        let (ip, token) = std::str::from_utf8(&req.context)
            .ok()
            .and_then(|c| c.split_once(' '))
            .ok_or_else(|| ChatError::Unauthorized("not a chat connection".into()))?;
        let ip = Some(ip).filter(|ip| !ip.is_empty());
        let caller = self.chat.caller(token, ip, now_ms()).await?;
        if chat_mid(caller.user.id) != req.mid {
            return Err(ChatError::Unauthorized(
                "the session is another user's".into(),
            ));
        }
        Ok(caller)
    }
}

/// A chat connection's grant context: its address and session token
/// (`IP TOKEN`; a token has no space, the address may be empty).
fn context(token: &str, ip: Option<&str>) -> Bytes {
    Bytes::from(format!("{} {token}", ip.unwrap_or("")))
}

/// An op-4 body: a message to store and push. Without `conversation_id`, a
/// visitor's conversation with the shop.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendFrame {
    pub conversation_id: Option<Id>,
    /// `text` (the default), `image` or `emoji`.
    pub kind: Option<String>,
    pub body: String,
    /// Makes a retried send idempotent.
    pub client_id: Option<String>,
}

/// An op-18 body: which page of history (the newest, or just before or after a
/// message id) and how long (default 50).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncFrame {
    pub conversation_id: Option<Id>,
    pub before: Option<Id>,
    pub after: Option<Id>,
    pub limit: Option<u32>,
}

/// An op-20 body: the caller has read up to `position`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadFrame {
    pub conversation_id: Option<Id>,
    pub position: Id,
}

/// What a chat op answers.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Reply {
    /// Op 5: the stored message.
    Sent(Sent),
    /// Op 19: a page of history and the read state.
    Sync(Synced),
    /// Op 21: the stored position and what is left unread.
    Read {
        conversation_id: Id,
        position: Id,
        unread: i64,
    },
    /// Any of the three: what went wrong (`status` as the HTTP API's).
    Error {
        status: u16,
        code: &'static str,
        message: String,
    },
}

/// A frame's JSON body.
fn frame<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ChatError> {
    serde_json::from_slice(body).map_err(|e| ChatError::BadRequest(format!("bad frame body: {e}")))
}

/// A [`Publisher`] given its target once that exists: the chat is built before
/// logic (logic's authenticator recognises chat connections), and pushes through
/// logic afterwards.
#[derive(Default)]
pub struct LatePublisher(OnceLock<Arc<dyn Publisher>>);

impl LatePublisher {
    /// Sets the target (once; later calls are ignored).
    pub fn set(&self, target: Arc<dyn Publisher>) {
        let _ = self.0.set(target);
    }
}

#[async_trait]
impl Publisher for LatePublisher {
    async fn push_mids(&self, op: i32, mids: &[Id], body: Vec<u8>) -> Result<(), String> {
        match self.0.get() {
            Some(p) => p.push_mids(op, mids, body).await,
            None => Err("the push path is not running yet".into()),
        }
    }

    async fn online(&self, mids: &[Id]) -> Result<Vec<Id>, String> {
        match self.0.get() {
            Some(p) => p.online(mids).await,
            None => Err("the route store is not running yet".into()),
        }
    }
}
