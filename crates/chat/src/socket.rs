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
use herald_logic::{AnswerBudget, Authenticator, Identity};
use herald_rpc::{ConnectReq, ErrorKind, Grant, Proto, ReceiveReq, RpcError, RpcResult};
use serde::{Deserialize, Serialize};

use crate::service::{
    chat_mid, Caller, Chat, ChatError, Draft, Publisher, Sent, Synced, CHAT_MID_BASE, EVENT_OP,
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
        Ok(self.answer_all(req).await?.into_iter().next().flatten())
    }

    async fn answer_all(&self, req: &ReceiveReq) -> RpcResult<Vec<Option<Proto>>> {
        if req.mid < CHAT_MID_BASE {
            return self.inner.answer_all(req).await;
        }
        let frames: Vec<&Proto> = req.proto.iter().chain(&req.more).collect();
        // One check of the session for the frames read together (none when
        // none is the chat's).
        let caller = if frames.iter().any(|p| reply_op(p.op).is_some()) {
            Some(self.connection_caller(req).await)
        } else {
            None
        };
        let mut replies = Vec::with_capacity(frames.len());
        let mut budget = AnswerBudget::new();
        let mut rest = &frames[..];
        while let Some(first) = rest.first() {
            if !replies.is_empty() && budget.spent() {
                // The rest are asked about again.
                break;
            }
            // Sends in a row are stored together, in their order.
            let n = match first.op {
                SEND_OP => rest.iter().take_while(|p| p.op == SEND_OP).count(),
                _ => 1,
            };
            let (these, later) = rest.split_at(n);
            let outcomes = match &caller {
                // Not a chat op: goim's empty echo.
                _ if reply_op(first.op).is_none() => vec![],
                None => vec![],
                Some(Err(e)) => (0..n).map(|_| Err(e.clone())).collect(),
                Some(Ok(caller)) if first.op == SEND_OP => self.sends(caller, these).await,
                Some(Ok(caller)) => vec![self.op(caller, first).await],
            };
            let mut outcomes = outcomes.into_iter();
            for p in these {
                let reply = outcomes.next().and_then(|o| reply_to(p, o));
                budget.took(reply.iter());
                replies.push(reply);
            }
            rest = later;
        }
        Ok(replies)
    }

    fn mode(&self) -> &'static str {
        self.inner.mode()
    }
}

impl ChatAuthenticator {
    /// Sends (op 4) read together: each checked, then all stored in their
    /// order and pushed. One outcome per frame.
    async fn sends(&self, caller: &Caller, frames: &[&Proto]) -> Vec<Result<Reply, ChatError>> {
        let chat = &self.chat;
        let now = now_ms();
        let mut outcomes = Vec::with_capacity(frames.len());
        let mut ready = Vec::with_capacity(frames.len());
        for p in frames {
            let checked = async {
                let f: SendFrame = frame(&p.body)?;
                let c = chat
                    .conversation_or_own(caller, f.conversation_id, now)
                    .await?;
                let kind = f.kind.as_deref().unwrap_or("text");
                let draft = Draft {
                    conversation: c,
                    kind,
                    body: &f.body,
                    client_id: f.client_id.as_deref(),
                };
                chat.outgoing(caller, draft, now).await
            };
            match checked.await {
                Ok(m) => {
                    ready.push(m);
                    outcomes.push(None);
                }
                Err(e) => outcomes.push(Some(Err(e))),
            }
        }
        let mut sent = chat.send_all(caller, ready, now).await.into_iter();
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    sent.next()
                        .unwrap_or_else(|| {
                            Err(ChatError::Unavailable("a send without an outcome".into()))
                        })
                        .map(Reply::Sent)
                })
            })
            .collect()
    }

    /// Does what a chat connection's sync (op 18) or read (op 20) asks, as
    /// its session's user.
    async fn op(&self, caller: &Caller, p: &Proto) -> Result<Reply, ChatError> {
        let chat = &self.chat;
        let now = now_ms();
        match p.op {
            SYNC_OP => {
                let f: SyncFrame = frame(&p.body)?;
                let c = chat
                    .conversation_or_own(caller, f.conversation_id, now)
                    .await?;
                let page = Page::of(f.before, f.after, f.limit.unwrap_or(DEFAULT_PAGE))
                    .map_err(|e| ChatError::BadRequest(e.into()))?;
                Ok(Reply::Sync(chat.history(caller, c, page).await?))
            }
            _ => {
                let f: ReadFrame = frame(&p.body)?;
                let c = chat
                    .conversation_or_own(caller, f.conversation_id, now)
                    .await?;
                let position = chat.mark_read(caller, c, f.position).await?;
                let unread = chat.unread(caller, c).await?;
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

/// The op that answers a chat op, if `op` is one.
fn reply_op(op: i32) -> Option<i32> {
    match op {
        SEND_OP => Some(SEND_REPLY_OP),
        SYNC_OP => Some(SYNC_REPLY_OP),
        READ_OP => Some(READ_REPLY_OP),
        _ => None,
    }
}

/// The frame answering chat frame `p`: what it did, or what went wrong.
fn reply_to(p: &Proto, outcome: Result<Reply, ChatError>) -> Option<Proto> {
    let reply = outcome.unwrap_or_else(|e| Reply::Error {
        status: e.status(),
        code: e.code(),
        message: e.to_string(),
    });
    // (Serializing these cannot fail: strings, integers and messages.)
    let body = serde_json::to_vec(&reply).unwrap_or_default();
    Some(Proto {
        ver: p.ver,
        op: reply_op(p.op)?,
        seq: p.seq,
        body: Bytes::from(body),
    })
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
