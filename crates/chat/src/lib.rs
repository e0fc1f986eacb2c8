//! The customer-service chat: shops (tenants) and their agents, visitors,
//! conversations (one per visitor with the shop's agents, and 1:1 between any two
//! users of a shop), messages with a per-conversation increasing id, read
//! positions and unread counts, IP blacklists and canned replies.
//!
//! Everything is kept through one seam, [`ChatStore`], with one implementation
//! over SQL ([`SqlStore`]) on two engines: SQLite (one file, the embedded
//! default) and PostgreSQL (shared by a cluster's logic processes). Migrations
//! are embedded and run when the store opens.

pub mod auth;
pub mod blobs;
pub mod config;
pub mod http;
pub mod service;
pub mod socket;
mod sql;

pub use config::ChatConfig;
pub use service::{Caller, Chat, ChatError, Publisher};
pub use sql::{now_ms, SqlStore};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A row id.
pub type Id = i64;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// A tenant: the shop whose agents answer its visitors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shop {
    pub id: Id,
    /// Unique; visitors open the chat with it (`…/chat/visitor?shop=NAME`).
    pub name: String,
    pub created_at: Millis,
}

/// What a user is to its shop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Logs in with a user name and a password; answers visitors.
    Agent,
    /// Created per shop without a password; holds one kefu conversation.
    Visitor,
}

impl Role {
    /// The name stored and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Visitor => "visitor",
        }
    }

    fn parse(s: &str) -> Result<Role, StoreError> {
        match s {
            "agent" => Ok(Role::Agent),
            "visitor" => Ok(Role::Visitor),
            other => Err(StoreError::Corrupt(format!("unknown role {other:?}"))),
        }
    }
}

/// An agent or a visitor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: Id,
    pub shop_id: Id,
    pub role: Role,
    /// An agent's login name (unique across shops); none for a visitor.
    pub username: Option<String>,
    pub nickname: String,
    /// Where a visitor came from (after trusted proxies).
    pub ip: Option<String>,
    pub created_at: Millis,
    pub last_seen_at: Millis,
    /// Sessions issued before this time (Unix seconds) have ended (a password
    /// change ends them all).
    #[serde(skip)]
    pub sessions_after: i64,
}

/// The two kinds of conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    /// A visitor with the shop's agents (any agent of the shop may take part).
    Kefu,
    /// Two users of one shop, keyed by the sorted pair.
    Direct,
}

impl ConversationKind {
    /// The name stored and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationKind::Kefu => "kefu",
            ConversationKind::Direct => "direct",
        }
    }

    fn parse(s: &str) -> Result<ConversationKind, StoreError> {
        match s {
            "kefu" => Ok(ConversationKind::Kefu),
            "direct" => Ok(ConversationKind::Direct),
            other => Err(StoreError::Corrupt(format!(
                "unknown conversation kind {other:?}"
            ))),
        }
    }
}

/// A conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conversation {
    pub id: Id,
    pub shop_id: Id,
    pub kind: ConversationKind,
    /// The visitor of a kefu conversation.
    pub visitor_id: Option<Id>,
    /// The two users of a direct conversation, smaller id first.
    pub pair: Option<(Id, Id)>,
    /// The agent a kefu conversation is assigned to, if any.
    pub assignee_id: Option<Id>,
    /// Id of the newest message (0: none yet). Message ids count up from 1.
    pub last_message_id: Id,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl Conversation {
    /// Whether `user` may read and write in this conversation: the visitor and
    /// the shop's agents for a kefu conversation, the two users of a direct one.
    pub fn admits(&self, user: &User) -> bool {
        if user.shop_id != self.shop_id {
            return false;
        }
        match self.kind {
            ConversationKind::Kefu => user.role == Role::Agent || self.visitor_id == Some(user.id),
            ConversationKind::Direct => {
                self.pair.is_some_and(|(a, b)| a == user.id || b == user.id)
            }
        }
    }
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub conversation_id: Id,
    /// Increasing within the conversation, from 1, without gaps.
    pub id: Id,
    pub sender_id: Id,
    /// `text`, `image` (the body is an upload's id) or `emoji`.
    pub kind: String,
    pub body: String,
    /// The id the sending client chose, which makes a retried send idempotent.
    pub client_id: Option<String>,
    pub created_at: Millis,
}

/// A conversation's read state as one reader sees it ([`ChatStore::read_state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadState {
    pub last_message_id: Id,
    /// Every stored read position, `(user id, position)` by user id (a member
    /// that never read has none: its position is 0).
    pub positions: Vec<(Id, Id)>,
    /// Messages after the reader's position that the reader did not send.
    pub unread: i64,
}

/// A message to store.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub conversation_id: Id,
    pub sender_id: Id,
    pub kind: String,
    pub body: String,
    pub client_id: Option<String>,
    pub at: Millis,
}

/// Which messages of a conversation to read; every page is oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The newest `limit`.
    Newest { limit: u32 },
    /// Up to `limit` just before message `id`.
    Before { id: Id, limit: u32 },
    /// Up to `limit` just after message `id`.
    After { id: Id, limit: u32 },
}

/// The page size of a history read that names none.
pub const DEFAULT_PAGE: u32 = 50;

impl Page {
    /// The page just before or just after a message, or the newest one.
    pub fn of(before: Option<Id>, after: Option<Id>, limit: u32) -> Result<Page, &'static str> {
        match (before, after) {
            (Some(_), Some(_)) => Err("give before or after, not both"),
            (Some(id), None) => Ok(Page::Before { id, limit }),
            (None, Some(id)) => Ok(Page::After { id, limit }),
            (None, None) => Ok(Page::Newest { limit }),
        }
    }
}

/// A conversation in a user's list: with its newest message, the user's
/// unread count and who is on the other side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub conversation: Conversation,
    pub last: Option<Message>,
    /// Messages after the user's read position that others sent.
    pub unread: i64,
    /// The other side: the visitor of a visitor's conversation (listed for an
    /// agent), the other user of a direct one; none for a visitor's own.
    pub peer: Option<Peer>,
}

/// Who a listed conversation is with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Peer {
    pub id: Id,
    pub role: Role,
    pub nickname: String,
    /// A visitor's address.
    pub ip: Option<String>,
    pub last_seen_at: Millis,
}

/// Which visitors of a shop to list.
#[derive(Debug, Clone, Default)]
pub struct VisitorQuery {
    /// Only visitors seen at or after this time.
    pub seen_since: Option<Millis>,
    /// Only visitors whose nickname or address contains this text.
    pub search: Option<String>,
    pub offset: u32,
    pub limit: u32,
}

/// A canned reply an agent can insert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Canned {
    pub id: Id,
    pub shop_id: Id,
    pub title: String,
    pub body: String,
    pub created_at: Millis,
}

/// A file uploaded into a conversation (its bytes are in a
/// [`blobs::BlobStore`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Upload {
    pub id: String,
    pub conversation_id: Id,
    pub uploader_id: Id,
    /// As sniffed from the bytes.
    pub content_type: String,
    pub size: i64,
    pub created_at: Millis,
}

/// What a retention purge removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Purged {
    /// Visitors not seen since the cut-off (their conversations, messages and
    /// read positions went with them).
    pub visitors: u64,
    /// Direct conversations with no activity since the cut-off.
    pub conversations: u64,
    /// The uploads of the conversations removed (their bytes are the caller's
    /// to remove from the blob store).
    pub uploads: Vec<String>,
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique name is taken (a shop name, an agent's user name).
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// A row the call names does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The call is not allowed on this row (e.g. a direct conversation across
    /// shops, or with oneself).
    #[error("{0}")]
    Invalid(&'static str),
    /// The database answered something this code never writes.
    #[error("unexpected data in the chat store: {0}")]
    Corrupt(String),
    /// The database could not be reached or failed.
    #[error("chat store unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
}

/// The chat's storage seam.
#[async_trait]
pub trait ChatStore: Send + Sync {
    /// Creates a shop and its first agent together.
    async fn create_shop(
        &self,
        name: &str,
        agent: &NewAgent<'_>,
        at: Millis,
    ) -> Result<(Shop, User), StoreError>;
    async fn shop(&self, id: Id) -> Result<Option<Shop>, StoreError>;
    async fn shop_by_name(&self, name: &str) -> Result<Option<Shop>, StoreError>;

    /// Adds an agent to a shop.
    async fn create_agent(
        &self,
        shop_id: Id,
        agent: &NewAgent<'_>,
        at: Millis,
    ) -> Result<User, StoreError>;
    /// An agent and its password hash, by login name.
    async fn agent_login(&self, username: &str) -> Result<Option<(User, String)>, StoreError>;
    async fn set_password(&self, user_id: Id, password_hash: &str) -> Result<(), StoreError>;
    /// The agents of a shop.
    async fn agents(&self, shop_id: Id) -> Result<Vec<User>, StoreError>;

    async fn create_visitor(
        &self,
        shop_id: Id,
        nickname: &str,
        ip: Option<&str>,
        at: Millis,
    ) -> Result<User, StoreError>;
    async fn user(&self, id: Id) -> Result<Option<User>, StoreError>;
    /// Records that a user was seen (connected, sent, read).
    async fn touch(&self, user_id: Id, at: Millis) -> Result<(), StoreError>;
    /// A shop's visitors, most recently seen first.
    async fn visitors(&self, shop_id: Id, q: &VisitorQuery) -> Result<Vec<User>, StoreError>;

    /// The visitor's kefu conversation, created on first use.
    async fn kefu_conversation(
        &self,
        visitor: &User,
        at: Millis,
    ) -> Result<Conversation, StoreError>;
    /// The direct conversation of two users of one shop, created on first use.
    async fn direct_conversation(
        &self,
        a: &User,
        b: &User,
        at: Millis,
    ) -> Result<Conversation, StoreError>;
    async fn conversation(&self, id: Id) -> Result<Option<Conversation>, StoreError>;
    /// Assigns a kefu conversation to one of its shop's agents (or nobody).
    async fn assign(&self, conversation_id: Id, agent_id: Option<Id>) -> Result<(), StoreError>;

    /// Stores a message under the conversation's next id. A message with the
    /// same sender and client id already stored is returned instead (`false`),
    /// and nothing is added.
    async fn append(&self, m: &NewMessage) -> Result<(Message, bool), StoreError> {
        self.append_all(std::slice::from_ref(m))
            .await
            .pop()
            .unwrap_or(Err(StoreError::Unavailable(sqlx::Error::PoolClosed)))
    }
    /// Stores messages as [`append`](ChatStore::append) does each, in the order
    /// given (of two messages into one conversation, the first gets the lower
    /// id); one outcome per message, in that order.
    async fn append_all(&self, ms: &[NewMessage]) -> Vec<Result<(Message, bool), StoreError>>;
    async fn messages(&self, conversation_id: Id, page: Page) -> Result<Vec<Message>, StoreError>;

    /// Moves the user's read position forward to `position` (never back, never
    /// past the newest message); returns the stored position.
    async fn mark_read(
        &self,
        conversation_id: Id,
        user_id: Id,
        position: Id,
    ) -> Result<Id, StoreError>;
    /// What a reader is told with a page of a conversation, in one read: its
    /// newest id, every stored read position and the reader's unread count.
    /// `None` when the conversation does not exist.
    async fn read_state(
        &self,
        conversation_id: Id,
        user_id: Id,
    ) -> Result<Option<ReadState>, StoreError>;
    /// Messages after the user's read position that the user did not send.
    async fn unread(&self, conversation_id: Id, user_id: Id) -> Result<i64, StoreError>;
    /// The conversations `user` takes part in, most recently active first, with
    /// the newest message and the user's unread count.
    async fn summaries(
        &self,
        user: &User,
        offset: u32,
        limit: u32,
    ) -> Result<Vec<Summary>, StoreError>;

    /// Adds `ip` to the shop's blacklist (idempotent).
    async fn blacklist_add(&self, shop_id: Id, ip: &str, at: Millis) -> Result<(), StoreError>;
    /// Removes it; returns whether it was there.
    async fn blacklist_remove(&self, shop_id: Id, ip: &str) -> Result<bool, StoreError>;
    async fn blacklist(&self, shop_id: Id) -> Result<Vec<String>, StoreError>;
    async fn is_blacklisted(&self, shop_id: Id, ip: &str) -> Result<bool, StoreError>;

    async fn canned_add(
        &self,
        shop_id: Id,
        title: &str,
        body: &str,
        at: Millis,
    ) -> Result<Canned, StoreError>;
    async fn canned(&self, shop_id: Id) -> Result<Vec<Canned>, StoreError>;
    /// Removes a shop's canned reply; returns whether it was there.
    async fn canned_remove(&self, shop_id: Id, id: Id) -> Result<bool, StoreError>;

    /// Records an upload into a conversation.
    async fn add_upload(&self, upload: &Upload) -> Result<(), StoreError>;
    /// An upload's record.
    async fn upload(&self, id: &str) -> Result<Option<Upload>, StoreError>;

    /// A user, whether the session `jti` was ended, and whether `ip` is on the
    /// blacklist of the user's shop: what every call checks, in one read.
    async fn session_user(
        &self,
        user_id: Id,
        jti: &str,
        ip: Option<&str>,
    ) -> Result<Option<(User, bool, bool)>, StoreError>;

    /// Ends one session: the token with this id is refused until it expires
    /// (`expires_at`, Unix seconds).
    async fn revoke(&self, jti: &str, expires_at: i64) -> Result<(), StoreError>;
    /// Whether the token with this id was ended.
    async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError>;
    /// Ends every session of the user issued before `before` (Unix seconds).
    async fn end_sessions(&self, user_id: Id, before: i64) -> Result<(), StoreError>;

    /// Removes visitors not seen since `before` (with their conversations),
    /// direct conversations with no activity since then, and the records of
    /// ended sessions whose tokens have expired by then.
    async fn purge(&self, before: Millis) -> Result<Purged, StoreError>;
}

/// An agent to create.
#[derive(Debug, Clone)]
pub struct NewAgent<'a> {
    pub username: &'a str,
    pub nickname: &'a str,
    /// An argon2 PHC string (never the password).
    pub password_hash: &'a str,
}
