//! Chat connections on the goim sockets: a client whose auth body is
//! `{"chat": "<session token>"}` connects as its chat user, whatever the
//! process's `[auth]` mode says for other clients, and may receive the chat's
//! events (op 5) only: no room, no other op, until its session expires.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use herald_logic::{Authenticator, Identity};
use herald_rpc::{ConnectReq, ErrorKind, Grant, RpcError, RpcResult};

use crate::service::{chat_mid, Chat, ChatError, Publisher, CHAT_MID_BASE, EVENT_OP};
use crate::{now_ms, Id};

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
        let _ = self.chat.store().touch(caller.user.id, now_ms()).await;
        Ok(Identity {
            mid: chat_mid(caller.user.id),
            key: String::new(),
            room_id: String::new(),
            accepts: vec![EVENT_OP],
            grant: Some(Grant {
                rooms: Vec::new(),
                any_room: false,
                ops: vec![EVENT_OP],
                any_op: false,
                expires_at: caller.session.exp,
            }),
        })
    }

    fn mode(&self) -> &'static str {
        self.inner.mode()
    }
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
